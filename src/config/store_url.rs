//! Store URLs (docs/design.md §6), parsed without I/O: `memory://`, and the Redis ones:
//!
//! - `redis://[user:password@]host[:port][/db]` — one server (`rediss://` for TLS);
//! - `redis+sentinel://[user:password@]host1[:port1],host2[:port2]/<master-name>` — the
//!   sentinels to ask for the master (`rediss+sentinel://` for TLS to sentinels and servers);
//! - `redis+cluster://[user:password@]host1[:port1],host2[:port2]/` — seed nodes of a cluster
//!   (`rediss+cluster://` for TLS).
//!
//! Credentials in the URL are for the Redis servers (not the sentinels) and may be
//! percent-encoded. Error messages never repeat the URL: it may hold a password.

use std::fmt;

/// How the servers are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server.
    Standalone,
    /// Sentinels that name the master of this service.
    Sentinel { master: String },
    /// Seed nodes of a Redis Cluster.
    Cluster,
}

/// A parsed Redis store URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub topology: Topology,
    /// TLS to every server (and sentinel).
    pub tls: bool,
    /// `(host, port)`: the server, the sentinels or the seed nodes.
    pub nodes: Vec<(String, u16)>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database index given in a standalone URL's path.
    pub database: Option<i64>,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

impl RedisUrl {
    /// Parses a URL whose scheme is one of the six Redis schemes.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("must start with a scheme such as redis://")?;
        let (topology_kind, tls) = match scheme {
            "redis" => ("standalone", false),
            "rediss" => ("standalone", true),
            "redis+sentinel" => ("sentinel", false),
            "rediss+sentinel" => ("sentinel", true),
            "redis+cluster" => ("cluster", false),
            "rediss+cluster" => ("cluster", true),
            _ => return Err(format!("{scheme}:// is not a Redis scheme")),
        };
        if rest.contains(['?', '#']) {
            return Err("query strings and fragments are not supported; use [store] keys".into());
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                let user = decode(user).ok_or("the user name is not valid percent-encoding")?;
                let pass = pass
                    .map(|p| decode(p).ok_or("the password is not valid percent-encoding"))
                    .transpose()?;
                (
                    (!user.is_empty()).then_some(user),
                    pass.filter(|p| !p.is_empty()),
                )
            }
        };
        let default_port = if topology_kind == "sentinel" {
            26379
        } else {
            6379
        };
        let nodes = hosts
            .split(',')
            .map(|node| parse_node(node, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        if topology_kind == "standalone" && nodes.len() != 1 {
            return Err(format!(
                "{scheme}:// takes one host; use {scheme}+cluster:// or {scheme}+sentinel:// for several"
            ));
        }
        let path = path.trim_end_matches('/');
        let (topology, database) = match topology_kind {
            "standalone" if path.is_empty() => (Topology::Standalone, None),
            "standalone" => {
                let db = path
                    .parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or("the path must be a database number (redis://host:6379/2)")?;
                (Topology::Standalone, Some(db))
            }
            "sentinel" => {
                let master = decode(path)
                    .filter(|m| !m.is_empty() && !m.contains('/'))
                    .ok_or(
                        "the path must be the master's name (redis+sentinel://s1,s2,s3/mymaster)",
                    )?;
                (Topology::Sentinel { master }, None)
            }
            _ if path.is_empty() => (Topology::Cluster, None),
            _ => return Err("a cluster URL has no path: a cluster has only database 0".into()),
        };
        Ok(RedisUrl {
            topology,
            tls,
            nodes,
            username,
            password,
            database,
        })
    }
}

fn parse_node(node: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || "each host must be host or host:port".to_owned();
    if node.is_empty() {
        return Err("a host is missing".into());
    }
    let (host, port) = if let Some(v6) = node.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match node.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (node, None),
        }
    };
    if host.is_empty() || host.contains(['@', ':']) && !node.starts_with('[') {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| "a port must be a number from 1 to 65535".to_owned())?,
    };
    Ok((host.to_owned(), port))
}

/// Percent-decoding of URL user info and paths; `None` when not valid UTF-8 or escapes.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The kinds of store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Redis(RedisUrl),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        match url.split_once("://").map(|(s, _)| s).unwrap_or("") {
            "memory" => Ok(StoreUrl::Memory),
            "redis" | "rediss" | "redis+sentinel" | "rediss+sentinel" | "redis+cluster"
            | "rediss+cluster" => RedisUrl::parse(url).map(StoreUrl::Redis),
            _ => Err(
                "must start with memory://, redis://, rediss://, redis+sentinel://, \
                      rediss+sentinel://, redis+cluster:// or rediss+cluster://"
                    .to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> RedisUrl {
        RedisUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn standalone_urls() {
        let u = ok("redis://127.0.0.1:6380/3");
        assert_eq!(u.topology, Topology::Standalone);
        assert_eq!(u.nodes, [("127.0.0.1".to_owned(), 6380)]);
        assert_eq!(u.database, Some(3));
        assert!(!u.tls);
        let u = ok("rediss://app:p%40ss%3Aword@redis.example");
        assert!(u.tls);
        assert_eq!(u.nodes, [("redis.example".to_owned(), 6379)]);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss:word"));
        let u = ok("redis://:only-password@[::1]:7000/");
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("only-password"));
        assert_eq!(u.nodes, [("::1".to_owned(), 7000)]);
    }

    #[test]
    fn sentinel_and_cluster_urls() {
        let u = ok("rediss+sentinel://a:1,b,c:3/my%20master");
        assert_eq!(
            u.topology,
            Topology::Sentinel {
                master: "my master".into()
            }
        );
        assert!(u.tls);
        assert_eq!(u.nodes[1], ("b".to_owned(), 26379));
        let u = ok("redis+cluster://u:p@n1:7000,n2:7001,n3/");
        assert_eq!(u.topology, Topology::Cluster);
        assert_eq!(u.nodes.len(), 3);
        assert_eq!(u.nodes[2], ("n3".to_owned(), 6379));
        assert_eq!(u.username.as_deref(), Some("u"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        for url in [
            "redis://a,b",
            "redis://host:99999",
            "redis://host:0",
            "redis://host/x",
            "redis://host/-1",
            "redis+sentinel://s1,s2/",
            "redis+cluster://n1,n2/5",
            "redis://",
            "redis://h?db=2",
            "redis://u:%zz@h",
            "redis+cluster://n1,,n2",
            "mongodb://h",
        ] {
            let e = RedisUrl::parse(url).expect_err(url);
            assert!(!e.contains("secret"), "{url}: {e}");
        }
        let e = RedisUrl::parse("redis://u:secret@a,b").expect_err("two hosts");
        assert!(!e.contains("secret"), "{e}");
        let dbg = format!("{:?}", ok("redis://u:secret@h"));
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
