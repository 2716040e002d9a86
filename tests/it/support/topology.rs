//! Real Redis topologies for one test, on free ports: TLS / mutual-TLS / ACL standalone servers,
//! a 3-master Redis Cluster and a Sentinel set, each able to lose its master on demand.
//!
//! The store has to survive what production Redis does: redirects and failovers in a cluster,
//! a master that moves behind Sentinel, certificates and ACL users. A mock cannot show that, so
//! every topology here is made of real `redis-server` processes, each with its own port,
//! directory and config file (`redis.conf` or `sentinel.conf`, kept for post-mortems beside
//! `redis.log` until the topology is dropped).
//!
//! ```ignore
//! let cluster = Cluster::start(Options::tls(true).with_acl("app", "s3cret"));
//! let key = "{family}:token";
//! let killed = cluster.kill_master_of_slot(slot_of(key));
//! cluster.wait_healthy(Duration::from_secs(10));
//! ```
//!
//! What every server gets ([`Options`] adds the rest):
//! - `bind 127.0.0.1`, AOF on with `appendfsync always`, no RDB snapshots, its own `dir`;
//! - `repl-diskless-sync-delay 0`: Redis 7.0 otherwise waits 5 s for more replicas before it
//!   starts a full sync, which would dominate every start-up and failover here.
//!
//! With [`Tls`] the data nodes listen on the TLS port only (`port 0`), replication, the cluster
//! bus and Sentinel's links are TLS too, and outgoing links present the client certificate
//! (`tls-client-cert-file`) so that mutual TLS holds between the servers themselves. With an ACL
//! user the `default` user of the data nodes is off. Sentinels accept that user *and* the open
//! `default` user, so a client may or may not authenticate to them (see [`Sentinel`]).
//!
//! Caveats: ports come from [`super::free_port`]-style probing, so another process can in
//! principle take one between the probe and the server's bind; all cluster bus ports are set
//! explicitly (`cluster-port`) because `port + 10000` overflows for ephemeral ports.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one `redis-cli` call may take before the rig gives up on it (a stuck server must
/// fail the test, not hang it).
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the rig re-checks a condition it waits for.
const POLL: Duration = Duration::from_millis(25);
/// How long a freshly spawned server may take to answer PING.
const BOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

/// PEM files of a private PKI, generated with rcgen into a temp dir that is removed on drop:
/// a self-signed CA, a server certificate for `127.0.0.1` and `localhost` (IP and DNS SANs,
/// extended key usage serverAuth) and a client certificate (clientAuth), both signed by the CA.
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    dir: PathBuf,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };

        let dir = super::temp_dir("tls");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };

        let mut ca = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca.distinguished_name
            .push(DnType::CommonName, "refresh-proxy test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |sans: Vec<String>, name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).expect("leaf parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("sign a leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "refresh-proxy test client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        TlsFiles {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            dir,
        }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS for a topology: its certificates and whether the servers require a client certificate.
#[derive(Clone, Debug)]
pub struct Tls {
    pub files: Arc<TlsFiles>,
    /// `tls-auth-clients yes` (mutual TLS) when set, `no` otherwise.
    pub mutual: bool,
}

// ---------------------------------------------------------------------------------------------
// Options and redis-cli
// ---------------------------------------------------------------------------------------------

/// What every topology can be asked for: TLS and an ACL user (name, password).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub tls: Option<Tls>,
    pub acl: Option<(String, String)>,
}

impl Options {
    /// TLS with freshly generated certificates; `mutual` makes client certificates mandatory.
    pub fn tls(mutual: bool) -> Options {
        Options::default().with_tls(mutual)
    }

    /// An ACL user with all permissions; the `default` user is off.
    pub fn acl(user: &str, password: &str) -> Options {
        Options::default().with_acl(user, password)
    }

    /// These options with TLS added (fresh certificates).
    pub fn with_tls(mut self, mutual: bool) -> Options {
        self.tls = Some(Tls {
            files: Arc::new(TlsFiles::generate()),
            mutual,
        });
        self
    }

    /// These options with an ACL user added.
    pub fn with_acl(mut self, user: &str, password: &str) -> Options {
        self.acl = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// `redis` or `rediss`, the scheme a client URL needs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The redis-cli flags that reach these servers: `--tls --cacert --cert --key` and
    /// `--user --pass` as configured (always the client certificate, so mutual TLS works too).
    pub fn cli_flags(&self) -> Vec<OsString> {
        let mut flags: Vec<OsString> = Vec::new();
        if let Some(tls) = &self.tls {
            flags.push("--tls".into());
            flags.push("--cacert".into());
            flags.push(tls.files.ca.clone().into());
            flags.push("--cert".into());
            flags.push(tls.files.client_cert.clone().into());
            flags.push("--key".into());
            flags.push(tls.files.client_key.clone().into());
        }
        if let Some((user, password)) = &self.acl {
            flags.extend(["--user", user, "--pass", password, "--no-auth-warning"].map(Into::into));
        }
        flags
    }

    /// Runs `redis-cli` against `127.0.0.1:port` with these options' flags and `-e` (error
    /// replies fail); returns stdout without its trailing newline, or the whole output as the
    /// error when redis-cli fails, is refused, or runs longer than 10 s.
    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut argv: Vec<OsString> = vec!["-h".into(), "127.0.0.1".into()];
        argv.push("-p".into());
        argv.push(port.to_string().into());
        argv.extend(self.cli_flags());
        argv.push("-e".into());
        argv.extend(args.iter().map(Into::into));
        run_cli(&argv, CLI_TIMEOUT)
    }

    /// [`Options::try_cli`] that panics on failure: for commands that must work.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args)
            .unwrap_or_else(|e| panic!("redis-cli -p {port} {}: {e}", args.join(" ")))
    }

    /// The config lines every data node shares (`port` for the listener, `dir` for its files).
    fn data_node_conf(&self, port: u16, dir: &Path) -> String {
        let mut conf = common_conf(self, port, dir);
        conf.push_str(
            "appendonly yes\nappendfsync always\nsave \"\"\nrepl-diskless-sync-delay 0\n",
        );
        if let Some((user, password)) = &self.acl {
            conf.push_str("user default off\n");
            conf.push_str(&format!(
                "user {user} on {} ~* &* +@all\n",
                quote(&format!(">{password}"))
            ));
            // Replicas authenticate to their master; every node may become a replica later.
            conf.push_str(&format!(
                "masteruser {user}\nmasterauth {}\n",
                quote(password)
            ));
        }
        conf
    }
}

/// Listener, files and TLS lines shared by data nodes and sentinels.
fn common_conf(opts: &Options, port: u16, dir: &Path) -> String {
    let mut conf = String::new();
    conf.push_str("bind 127.0.0.1\n");
    match &opts.tls {
        None => conf.push_str(&format!("port {port}\n")),
        Some(tls) => {
            let f = &tls.files;
            conf.push_str(&format!("port 0\ntls-port {port}\n"));
            conf.push_str(&format!("tls-cert-file {}\n", quote_path(&f.server_cert)));
            conf.push_str(&format!("tls-key-file {}\n", quote_path(&f.server_key)));
            conf.push_str(&format!(
                "tls-client-cert-file {}\n",
                quote_path(&f.client_cert)
            ));
            conf.push_str(&format!(
                "tls-client-key-file {}\n",
                quote_path(&f.client_key)
            ));
            conf.push_str(&format!("tls-ca-cert-file {}\n", quote_path(&f.ca)));
            let auth = if tls.mutual { "yes" } else { "no" };
            conf.push_str(&format!("tls-auth-clients {auth}\ntls-replication yes\n"));
        }
    }
    conf.push_str(&format!("dir {}\n", quote_path(dir)));
    conf.push_str(&format!("logfile {}\n", quote_path(&dir.join("redis.log"))));
    conf
}

/// A config-file argument in double quotes (Redis parses them like C strings).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn quote_path(p: &Path) -> String {
    quote(p.to_str().expect("temp paths are UTF-8"))
}

/// Runs redis-cli with a deadline, collecting stdout and stderr.
fn run_cli(argv: &[OsString], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new("redis-cli")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli must be installed (the README's test command installs it)");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redis-cli") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Some(s) if s.success() => Ok(stdout.trim_end().to_owned()),
        Some(s) => Err(format!("{s}: {}{}", stdout, stderr.trim_end())),
        None => Err(format!("no answer within {timeout:?}: {stdout}{stderr}")),
    }
}

/// Polls `probe` until it returns `Ok` or `timeout` passes; the error is the probe's last one.
fn wait_for<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The value of `key` in INFO output (`key:value` lines, CRLF-terminated).
fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim_end_matches('\r').split_once(':')?;
        (k == key).then_some(v)
    })
}

/// Waits until the data node on `port` is a replica with its link to the master up.
fn wait_replica(opts: &Options, port: u16, timeout: Duration) {
    let result = wait_for(timeout, || {
        let info = opts.try_cli(port, &["INFO", "replication"])?;
        expect_field(&info, "role", "slave")?;
        expect_field(&info, "master_link_status", "up")
    });
    if let Err(e) = result {
        panic!("{port} did not become a replica within {timeout:?}: {e}");
    }
}

/// Checks that INFO `field` equals `want` (for probes).
fn expect_field(info: &str, field: &str, want: &str) -> Result<(), String> {
    match info_field(info, field) {
        Some(v) if v == want => Ok(()),
        other => Err(format!("{field} is {other:?}, want {want:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// One server process
// ---------------------------------------------------------------------------------------------

/// One `redis-server` process (data node or sentinel): port, directory, config file.
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    sentinel: bool,
    child: Option<Child>,
}

impl Node {
    /// Creates `root/name` and writes the config file, without starting the server.
    fn new(
        root: &Path,
        name: &str,
        port: u16,
        sentinel: bool,
        conf: impl FnOnce(&Path) -> String,
    ) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("create a node dir");
        let node = Node {
            port,
            dir,
            sentinel,
            child: None,
        };
        std::fs::write(node.conf(), conf(&node.dir)).expect("write a config file");
        node
    }

    fn conf(&self) -> PathBuf {
        self.dir.join(if self.sentinel {
            "sentinel.conf"
        } else {
            "redis.conf"
        })
    }

    /// Starts the process; [`Node::wait_up`] waits for it to answer.
    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.port
        );
        // Config errors are printed before the log file is opened: keep them too.
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).expect("create stderr.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.conf());
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
    }

    /// Waits until the server answers PING through `opts` (so TLS and ACL work as well).
    fn wait_up(&mut self, opts: &Options) {
        let port = self.port;
        let result = wait_for(BOOT_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Ok(Err(format!("exited with {status}")));
            }
            match opts.try_cli(port, &["PING"]) {
                Ok(pong) if pong == "PONG" => Ok(Ok(())),
                Ok(other) => Err(other),
                Err(e) => Err(e),
            }
        });
        if let Err(e) | Ok(Err(e)) = result {
            panic!(
                "redis-server on {port} did not come up: {e}\n{}",
                self.logs()
            );
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: the server dies as in a crash, without a goodbye to its clients or peers.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The tail of its log and stderr, for panic messages.
    fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "--- {} {} (redis.log, stderr.log) ---\n{}\n{}",
            if self.sentinel { "sentinel" } else { "node" },
            self.port,
            tail("redis.log"),
            tail("stderr.log")
        )
    }
}

/// Starts every node, then waits for all of them (they boot in parallel).
fn boot(nodes: &mut [Node], opts: &Options) {
    for node in nodes.iter_mut() {
        node.spawn();
    }
    for node in nodes.iter_mut() {
        node.wait_up(opts);
    }
}

/// Log tails of several nodes, for panic messages.
fn all_logs(nodes: &[Node]) -> String {
    nodes.iter().map(Node::logs).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------
// Standalone
// ---------------------------------------------------------------------------------------------

/// One server with [`Options`] (TLS, mutual TLS, ACL); for a plain server use
/// [`super::redis::RedisServer`].
#[derive(Debug)]
pub struct Standalone {
    pub port: u16,
    opts: Options,
    root: PathBuf,
    node: Node,
}

impl Standalone {
    pub fn start(opts: Options) -> Standalone {
        let root = super::temp_dir("standalone");
        let port = super::free_port();
        let node = Node::new(&root, "node", port, false, |dir| {
            opts.data_node_conf(port, dir)
        });
        let mut s = Standalone {
            port,
            opts,
            root,
            node,
        };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:<port>` or `rediss://…`; credentials are not in the URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.opts.scheme(), self.port)
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// [`Options::cli`] against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        self.opts.cli(self.port, args)
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts it again on the same port and directory (data comes back from the AOF).
    pub fn restart(&mut self) {
        self.node.kill();
        self.node.spawn();
        self.node.wait_up(&self.opts);
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.node.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// The hash slot of `key`: CRC16/XMODEM of the key, or of its hash tag, mod 16384.
///
/// Cluster spec: if the key contains `{` and a later `}` with at least one byte between them,
/// only the bytes between the first `{` and the first `}` after it are hashed.
pub fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection), as the cluster spec uses.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct ClusterNodeLine {
    id: String,
    port: u16,
    master: bool,
    /// `fail`, `fail?`, `handshake` or `noaddr`: not to be counted on.
    failing: bool,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNodeLine>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return Err(format!("short CLUSTER NODES line: {line}"));
            }
            let addr = f[1].split('@').next().unwrap_or_default();
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("no port in {line}"))?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Ok((
                        a.parse().map_err(|_| format!("bad slot {s}"))?,
                        b.parse().map_err(|_| format!("bad slot {s}"))?,
                    ))
                })
                .collect::<Result<_, String>>()?;
            Ok(ClusterNodeLine {
                id: f[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failing: flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr")),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster of 6 nodes: 3 masters with one replica each, made by
/// `redis-cli --cluster create`. `cluster-node-timeout 1000` makes a failover take about 2–3 s;
/// start-up takes about 2.3 s, most of it Redis's own 2 s delay before a freshly booted master
/// reports `cluster_state:ok`.
///
/// Which nodes end up masters is redis-cli's choice; ask [`Cluster::masters`] or
/// [`Cluster::master_of_slot`]. Killed nodes stay killed until [`Cluster::restart_node`]; drop
/// kills every node and removes the directories.
#[derive(Debug)]
pub struct Cluster {
    opts: Options,
    root: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let root = super::temp_dir("cluster");
        let ports = super::ports::take(12);
        let nodes = (0..6)
            .map(|i| {
                let (port, bus) = (ports[i], ports[i + 6]);
                Node::new(&root, &format!("node-{port}"), port, false, |dir| {
                    let mut conf = opts.data_node_conf(port, dir);
                    conf.push_str("cluster-enabled yes\ncluster-node-timeout 1000\n");
                    // Ephemeral port + 10000 (the default bus port) can exceed 65535.
                    conf.push_str(&format!("cluster-port {bus}\n"));
                    let nodes_conf = quote_path(&dir.join("nodes.conf"));
                    conf.push_str(&format!("cluster-config-file {nodes_conf}\n"));
                    if opts.tls.is_some() {
                        conf.push_str("tls-cluster yes\n");
                    }
                    conf
                })
            })
            .collect();
        let mut cluster = Cluster { opts, root, nodes };
        boot(&mut cluster.nodes, &cluster.opts);

        let mut argv: Vec<OsString> = cluster.opts.cli_flags();
        argv.extend(["--cluster", "create"].map(OsString::from));
        argv.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port).into()),
        );
        argv.extend(["--cluster-replicas", "1", "--cluster-yes"].map(OsString::from));
        if let Err(e) = run_cli(&argv, Duration::from_secs(30)) {
            panic!(
                "redis-cli --cluster create failed: {e}\n{}",
                all_logs(&cluster.nodes)
            );
        }
        cluster.wait_ready(Duration::from_secs(15));
        cluster
    }

    /// Every node sees 6 healthy nodes and all slots, and every replica's link is up.
    fn wait_ready(&self, timeout: Duration) {
        let result = wait_for(timeout, || {
            for node in &self.nodes {
                let info = self.opts.try_cli(node.port, &["CLUSTER", "INFO"])?;
                expect_field(&info, "cluster_state", "ok")?;
                expect_field(&info, "cluster_slots_ok", "16384")?;
                expect_field(&info, "cluster_known_nodes", "6")?;
                let view = self.view(node.port)?;
                let replicas: Vec<_> = view.iter().filter(|n| !n.master).collect();
                if view.iter().any(|n| n.failing) || replicas.len() != 3 {
                    return Err(format!("node {} sees {view:?}", node.port));
                }
                if let Some(replica) = replicas.iter().find(|r| r.port == node.port) {
                    let info = self.opts.try_cli(replica.port, &["INFO", "replication"])?;
                    expect_field(&info, "master_link_status", "up")?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!(
                "cluster did not become ready: {e}\n{}",
                all_logs(&self.nodes)
            );
        }
    }

    /// `redis+cluster://127.0.0.1:p1,…,127.0.0.1:p6/` (or `rediss+cluster://`), all six as
    /// seeds; credentials are not in the URL.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("{}+cluster://{}/", self.opts.scheme(), seeds.join(","))
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// All six ports, killed nodes included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of nodes that are running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect()
    }

    /// [`Options::cli`] against one node (add `-c` to follow redirects).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.opts.cli(port, args)
    }

    /// Every node's log and its view of the cluster, for a failing assertion's message.
    pub fn diagnostics(&self) -> String {
        let views: Vec<String> = self
            .live_ports()
            .into_iter()
            .map(
                |port| match self.opts.try_cli(port, &["CLUSTER", "NODES"]) {
                    Ok(nodes) => format!("CLUSTER NODES on {port}:\n{nodes}"),
                    Err(e) => format!("CLUSTER NODES on {port}: {e}"),
                },
            )
            .collect();
        format!("{}\n{}", views.join("\n"), all_logs(&self.nodes))
    }

    /// Polls `GET key` on the node on `port` (no redirects) until it answers `want`; panics
    /// with [`Cluster::diagnostics`] after `timeout`.
    pub fn wait_value(&self, port: u16, key: &str, want: &str, timeout: Duration) {
        let result = wait_for(timeout, || {
            match self.opts.try_cli(port, &["GET", key])? {
                got if got == want => Ok(()),
                got => Err(format!("GET {key} on {port} is {got:?}, want {want:?}")),
            }
        });
        if let Err(e) = result {
            panic!("{e}\n{}", self.diagnostics());
        }
    }

    /// `CLUSTER NODES` as seen by the node on `port`.
    fn view(&self, port: u16) -> Result<Vec<ClusterNodeLine>, String> {
        parse_cluster_nodes(&self.opts.try_cli(port, &["CLUSTER", "NODES"])?)
    }

    /// A live node's view; panics if none answers.
    fn any_view(&self) -> Vec<ClusterNodeLine> {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match self.view(port) {
                Ok(view) => return view,
                Err(e) => errors.push(e),
            }
        }
        panic!("no live cluster node answers CLUSTER NODES: {errors:?}");
    }

    /// Ports of the masters that own slots, as a live node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let view = self.any_view();
        view.iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the replicas of the master on `master_port`, as a live node sees them.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let view = self.any_view();
        let Some(master) = view.iter().find(|n| n.port == master_port) else {
            panic!("no node on {master_port} in {view:?}");
        };
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.any_view();
        view.iter()
            .find(|n| {
                n.master && !n.failing && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {view:?}"))
    }

    /// SIGKILLs the master serving `slot`; returns its port. Its replica takes over after
    /// about `cluster-node-timeout` plus an election: see [`Cluster::wait_healthy`].
    pub fn kill_master_of_slot(&mut self, slot: u16) -> u16 {
        let port = self.master_of_slot(slot);
        self.kill_node(port);
        port
    }

    /// SIGKILLs the node on `port`.
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts a killed node again with its `nodes.conf` and AOF; it rejoins the cluster (as a
    /// replica if it was failed over).
    pub fn restart_node(&mut self, port: u16) {
        let opts = self.opts.clone();
        let node = self.node_mut(port);
        node.kill();
        node.spawn();
        node.wait_up(&opts);
    }

    /// Waits until the node on `port` is a replica with its link to the master up and every
    /// live node sees it as a healthy replica (after [`Cluster::restart_node`] of a master that
    /// was failed over; gossip spreads the news a little after the node itself knows).
    pub fn wait_replica(&self, port: u16, timeout: Duration) {
        let started = Instant::now();
        wait_replica(&self.opts, port, timeout);
        let result = wait_for(timeout.saturating_sub(started.elapsed()), || {
            for live in self.live_ports() {
                let view = self.view(live)?;
                match view.iter().find(|n| n.port == port) {
                    Some(n) if !n.master && !n.failing && n.master_id.is_some() => {}
                    other => return Err(format!("node {live} sees {other:?}")),
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{port} is not a replica for all nodes within {timeout:?}: {e}");
        }
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on {port}"))
    }

    /// Waits until every live node reports `cluster_state:ok` and sees all 16384 slots served
    /// by masters that are running (so a killed master's replica has been promoted).
    pub fn wait_healthy(&self, timeout: Duration) {
        let live = self.live_ports();
        let result = wait_for(timeout, || {
            for &port in &live {
                let info = self.opts.try_cli(port, &["CLUSTER", "INFO"])?;
                expect_field(&info, "cluster_state", "ok")?;
                let served: u32 = self
                    .view(port)?
                    .iter()
                    .filter(|n| n.master && !n.failing && live.contains(&n.port))
                    .flat_map(|n| &n.slots)
                    .map(|&(a, b)| u32::from(b - a) + 1)
                    .sum();
                if served != u32::from(SLOTS) {
                    return Err(format!("node {port} sees {served} slots on live masters"));
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!(
                "cluster did not heal within {timeout:?}: {e}\n{}",
                all_logs(&self.nodes)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A reply's flat `key value key value …` lines as maps; a new map starts at each `name` key
/// (how redis-cli prints `SENTINEL MASTER` / `REPLICAS` / `SENTINELS` when not on a tty).
fn sentinel_maps(raw: &str) -> Vec<HashMap<String, String>> {
    let lines: Vec<&str> = raw.lines().filter(|l| !l.is_empty()).collect();
    let mut maps: Vec<HashMap<String, String>> = Vec::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { break };
        if *key == "name" || maps.is_empty() {
            maps.push(HashMap::new());
        }
        if let Some(map) = maps.last_mut() {
            map.insert((*key).to_owned(), (*value).to_owned());
        }
    }
    maps
}

/// Checks that a sentinel reply map has `field` equal to `want`.
fn expect_entry(map: &HashMap<String, String>, field: &str, want: &str) -> Result<(), String> {
    match map.get(field) {
        Some(v) if v == want => Ok(()),
        other => Err(format!("{field} is {other:?}, want {want:?}")),
    }
}

/// A master, one replica and 3 sentinels monitoring them as `mymaster` (quorum 2,
/// `down-after-milliseconds 1000`, `failover-timeout 3000`).
///
/// With an ACL user the sentinels authenticate to the data nodes (`sentinel auth-user` /
/// `auth-pass`); the sentinels themselves accept that user and also the open `default` user,
/// so a client works whether it sends credentials to sentinels or only to the master
/// ([`Sentinel::start_requiring_auth`] turns their `default` user off as well). With TLS
/// sentinels listen on TLS only (requiring a client certificate when mutual, like the data
/// nodes) and talk TLS to the data nodes and to each other.
///
/// Start-up waits for Sentinel's own discovery (hello messages every 2 s), so it takes about
/// 2.3 s; a failover takes about 2.3 s more (`down-after-milliseconds`, vote, promotion, and
/// every sentinel agreeing).
#[derive(Debug)]
pub struct Sentinel {
    opts: Options,
    root: PathBuf,
    data: Vec<Node>,
    sentinels: Vec<Node>,
}

impl Sentinel {
    /// The monitored master's name.
    pub const MASTER: &'static str = "mymaster";

    pub fn start(opts: Options) -> Sentinel {
        Sentinel::launch(opts, false)
    }

    /// Like [`Sentinel::start`], but the sentinels' `default` user is off too: clients must
    /// authenticate to the sentinels with the ACL user, and the sentinels authenticate to each
    /// other with it (`sentinel sentinel-user` / `sentinel-pass`).
    pub fn start_requiring_auth(opts: Options) -> Sentinel {
        assert!(opts.acl.is_some(), "requiring auth needs an ACL user");
        Sentinel::launch(opts, true)
    }

    fn launch(opts: Options, sentinels_require_auth: bool) -> Sentinel {
        let root = super::temp_dir("sentinel");
        let ports = super::ports::take(5);
        let (master_port, replica_port) = (ports[0], ports[1]);
        let data = vec![
            Node::new(&root, "master", master_port, false, |dir| {
                opts.data_node_conf(master_port, dir)
            }),
            Node::new(&root, "replica", replica_port, false, |dir| {
                let mut conf = opts.data_node_conf(replica_port, dir);
                conf.push_str(&format!("replicaof 127.0.0.1 {master_port}\n"));
                conf
            }),
        ];
        let sentinels = ports[2..]
            .iter()
            .map(|&port| {
                Node::new(&root, &format!("sentinel-{port}"), port, true, |dir| {
                    let mut conf = common_conf(&opts, port, dir);
                    let m = Self::MASTER;
                    conf.push_str(&format!("sentinel monitor {m} 127.0.0.1 {master_port} 2\n"));
                    conf.push_str(&format!("sentinel down-after-milliseconds {m} 1000\n"));
                    conf.push_str(&format!("sentinel failover-timeout {m} 3000\n"));
                    conf.push_str(&format!("sentinel parallel-syncs {m} 1\n"));
                    if let Some((user, password)) = &opts.acl {
                        conf.push_str(&format!("sentinel auth-user {m} {user}\n"));
                        conf.push_str(&format!("sentinel auth-pass {m} {}\n", quote(password)));
                        let pass = quote(&format!(">{password}"));
                        conf.push_str(&format!("user {user} on {pass} ~* &* +@all\n"));
                        if sentinels_require_auth {
                            conf.push_str("user default off\n");
                            conf.push_str(&format!("sentinel sentinel-user {user}\n"));
                            conf.push_str(&format!("sentinel sentinel-pass {}\n", quote(password)));
                        }
                    }
                    conf
                })
            })
            .collect();
        let mut set = Sentinel {
            opts,
            root,
            data,
            sentinels,
        };
        boot(&mut set.data, &set.opts);
        // Sentinels learn about replicas from the master's INFO, which they ask for on connect
        // and then only every 10 s: the replica must be attached before they start.
        let replica = &set.data[1];
        let linked = wait_for(BOOT_TIMEOUT, || {
            let info = set.opts.try_cli(replica.port, &["INFO", "replication"])?;
            expect_field(&info, "master_link_status", "up")
        });
        if let Err(e) = linked {
            panic!("replica did not sync: {e}\n{}", all_logs(&set.data));
        }
        boot(&mut set.sentinels, &set.opts);
        set.wait_ready(Duration::from_secs(10));
        set
    }

    /// Every sentinel sees the master, the replica (link up) and the 2 other sentinels.
    fn wait_ready(&self, timeout: Duration) {
        let m = Self::MASTER;
        let result = wait_for(timeout, || {
            for s in &self.sentinels {
                let master = sentinel_maps(&self.opts.try_cli(s.port, &["SENTINEL", "MASTER", m])?);
                let master = master.first().ok_or("no SENTINEL MASTER reply")?;
                expect_entry(master, "flags", "master")?;
                expect_entry(master, "num-slaves", "1")?;
                expect_entry(master, "num-other-sentinels", "2")?;
                let replicas =
                    sentinel_maps(&self.opts.try_cli(s.port, &["SENTINEL", "REPLICAS", m])?);
                for replica in &replicas {
                    expect_entry(replica, "flags", "slave")?;
                    expect_entry(replica, "master-link-status", "ok")?;
                }
                let peers =
                    sentinel_maps(&self.opts.try_cli(s.port, &["SENTINEL", "SENTINELS", m])?);
                if peers.len() != 2 {
                    return Err(format!("sentinel {} sees {} peers", s.port, peers.len()));
                }
                for peer in &peers {
                    expect_entry(peer, "flags", "sentinel")?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            let mut logs = all_logs(&self.data);
            logs.push_str(&all_logs(&self.sentinels));
            panic!("sentinels did not become ready: {e}\n{logs}");
        }
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster` (or `rediss+…`);
    /// credentials are not in the URL.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "{}+sentinel://{}/{}",
            self.opts.scheme(),
            nodes.join(","),
            Self::MASTER
        )
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|n| n.port).collect()
    }

    /// Ports of the two data nodes (master and replica, in either role), killed ones included.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|n| n.port).collect()
    }

    /// [`Options::cli`] against a data node or a sentinel.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.opts.cli(port, args)
    }

    /// The master's port as a sentinel reports it (`SENTINEL get-master-addr-by-name`).
    pub fn master_port(&self) -> u16 {
        let port = self.sentinels[0].port;
        self.reported_master(port)
            .unwrap_or_else(|e| panic!("sentinel {port} does not name the master: {e}"))
    }

    fn reported_master(&self, sentinel_port: u16) -> Result<u16, String> {
        let reply = self.opts.try_cli(
            sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER],
        )?;
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("unexpected reply {reply:?}"))
    }

    /// SIGKILLs the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        let ports = self.data_ports();
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("sentinels name {port}, not one of {ports:?}"))
            .kill();
        port
    }

    /// Waits until every sentinel names a master other than `old_port` and that server says
    /// `ROLE` master; returns its port.
    pub fn wait_failover(&self, old_port: u16, timeout: Duration) -> u16 {
        let result = wait_for(timeout, || {
            let mut named = Vec::new();
            for s in &self.sentinels {
                named.push(self.reported_master(s.port)?);
            }
            let new = named[0];
            if new == old_port || named.iter().any(|&p| p != new) {
                return Err(format!("sentinels name {named:?}"));
            }
            let role = self.opts.try_cli(new, &["ROLE"])?;
            match role.lines().next() {
                Some("master") => Ok(new),
                other => Err(format!("{new} says ROLE {other:?}")),
            }
        });
        result.unwrap_or_else(|e| {
            let mut logs = all_logs(&self.data);
            logs.push_str(&all_logs(&self.sentinels));
            panic!("no failover away from {old_port} within {timeout:?}: {e}\n{logs}")
        })
    }

    /// Starts killed data nodes again (same port, dir and AOF); returns their ports. A former
    /// master comes back believing it is still master and accepts writes until the sentinels
    /// turn it into a replica of the new master, about 10 s later (Sentinel first wants 8 s of
    /// consistent INFO reports): see [`Sentinel::wait_replica`].
    pub fn restart_killed(&mut self) -> Vec<u16> {
        let mut restarted = Vec::new();
        for node in self.data.iter_mut().filter(|n| !n.alive()) {
            node.spawn();
            node.wait_up(&self.opts);
            restarted.push(node.port);
        }
        restarted
    }

    /// Waits until the data node on `port` is a replica with its link to the master up.
    pub fn wait_replica(&self, port: u16, timeout: Duration) {
        wait_replica(&self.opts, port, timeout);
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        for node in self.sentinels.iter_mut().chain(&mut self.data) {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
