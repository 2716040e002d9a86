//! A client certificate's subject as a `tls_client_auth` client registers it (RFC 8705 §2.1.2;
//! docs/design.md §4.19): an RFC 4514 distinguished name or one subject alternative name, and
//! whether a certificate (DER) has it. Pure.
//!
//! A distinguished name is compared attribute by attribute: RFC 4514 writes the last RDN first;
//! the attributes of a multi-valued RDN may come in any order; values are compared as X.520's
//! caseIgnoreMatch does (case and runs of spaces do not count).
//!
//! ```
//! use refresh_proxy::internal::client_cert::subject::Subject;
//! let dn = Subject::dn("CN=client-a, O=Example\\, Inc.").expect("RFC 4514");
//! assert_eq!(format!("{dn:?}"), r#"Dn([[("2.5.4.3", "client-a")], [("2.5.4.10", "example, inc.")]])"#);
//! assert!(Subject::dn("CN=#0403616263").is_err(), "hex (BER) values are not supported");
//! ```

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a `tls_client_auth` client registered its certificate's subject as (RFC 8705 §2.1.2:
/// exactly one).
#[derive(Clone, PartialEq, Eq)]
pub enum Subject {
    /// `tls_client_auth_subject_dn`: RDNs in certificate order (the RFC 4514 text reversed),
    /// each a set of (attribute type OID, normalised value).
    Dn(Vec<Vec<(String, String)>>),
    /// `tls_client_auth_san_dns`: a dNSName (compared without case).
    Dns(String),
    /// `tls_client_auth_san_uri`: a uniformResourceIdentifier (compared exactly).
    Uri(String),
    /// `tls_client_auth_san_ip`: an iPAddress.
    Ip(IpAddr),
    /// `tls_client_auth_san_email`: an rfc822Name (compared exactly).
    Email(String),
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Dn(rdns) => {
                // Shown in RFC 4514 order, as configured.
                let shown: Vec<_> = rdns.iter().rev().collect();
                f.debug_tuple("Dn").field(&shown).finish()
            }
            Subject::Dns(v) => f.debug_tuple("Dns").field(v).finish(),
            Subject::Uri(v) => f.debug_tuple("Uri").field(v).finish(),
            Subject::Ip(v) => f.debug_tuple("Ip").field(v).finish(),
            Subject::Email(v) => f.debug_tuple("Email").field(v).finish(),
        }
    }
}

/// RFC 4514 §3's attribute type names, and the few more that certificates commonly carry.
const NAMES: &[(&str, &str)] = &[
    ("CN", "2.5.4.3"),
    ("SN", "2.5.4.4"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("T", "2.5.4.12"),
    ("TITLE", "2.5.4.12"),
    ("GN", "2.5.4.42"),
    ("GIVENNAME", "2.5.4.42"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("E", "1.2.840.113549.1.9.1"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
    ("ORGANIZATIONIDENTIFIER", "2.5.4.97"),
];

/// The longest subject value accepted in config.
const MAX_DN_CHARS: usize = 4096;

impl Subject {
    /// Parses RFC 4514 text: `type=value` pairs, RDNs separated by `,`, multi-valued RDNs by
    /// `+`, `\` escapes (a special character or two hex digits of UTF-8). Types are the RFC 4514
    /// names (and a few more, [`NAMES`]) or dotted OIDs. Hex-encoded (`#…`) values are refused.
    pub fn dn(text: &str) -> Result<Subject, &'static str> {
        if text.len() > MAX_DN_CHARS {
            return Err("longer than 4096 characters");
        }
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            // type
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err("an attribute has no '='");
            }
            let oid = attribute_oid(name.trim()).ok_or("an unknown attribute type")?;
            // value
            let mut bytes = Vec::new();
            if chars.peek() == Some(&'#') {
                return Err("hex-encoded (#) values are not supported");
            }
            let end = loop {
                match chars.next() {
                    None => break None,
                    Some(c @ (',' | '+')) => break Some(c),
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '+' | ',' | ';' | '<' | '>' | '\\' | ' ' | '#' | '=')) => {
                            bytes.push(c as u8);
                        }
                        Some(h) => {
                            let l = chars.next().ok_or("a '\\' escape is cut short")?;
                            let byte = hex(h)
                                .zip(hex(l))
                                .map(|(h, l)| h << 4 | l)
                                .ok_or("a '\\' escape is not a special character or hex pair")?;
                            bytes.push(byte);
                        }
                        None => return Err("a '\\' escape is cut short"),
                    },
                    Some('"' | ';' | '<' | '>') => {
                        return Err("an unescaped special character (\" ; < >)");
                    }
                    Some(c) => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            };
            let value = String::from_utf8(bytes).map_err(|_| "a value is not UTF-8")?;
            // caseIgnoreMatch: spaces around a value (escaped or not) do not count.
            let value = normalise(&value);
            if value.is_empty() {
                return Err("an attribute value is empty");
            }
            rdn.push((oid, value));
            match end {
                Some('+') => continue,
                Some(_) => rdns.push(std::mem::take(&mut rdn)),
                None => {
                    rdns.push(rdn);
                    break;
                }
            }
        }
        for rdn in &mut rdns {
            rdn.sort();
        }
        rdns.reverse();
        Ok(Subject::Dn(rdns))
    }

    /// The subject a `tls_client_auth_*` config key names (`kind`: `subject_dn`, `san_dns`,
    /// `san_uri`, `san_ip`, `san_email`).
    pub fn parse(kind: &str, value: &str) -> Result<Subject, &'static str> {
        let value = value.trim();
        if value.is_empty() {
            return Err("must not be empty");
        }
        Ok(match kind {
            "subject_dn" => Subject::dn(value)?,
            "san_dns" => Subject::Dns(value.to_ascii_lowercase()),
            "san_uri" => Subject::Uri(value.to_owned()),
            "san_ip" => Subject::Ip(value.parse().map_err(|_| "not an IP address")?),
            "san_email" => Subject::Email(value.to_owned()),
            _ => return Err("not a tls_client_auth subject kind"),
        })
    }

    /// Whether the certificate (DER) has this subject. A certificate that does not parse has
    /// none.
    pub fn matches(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return false;
        };
        match self {
            Subject::Dn(expected) => {
                let mut seen = Vec::with_capacity(expected.len());
                for rdn in cert.subject().iter() {
                    let mut set = Vec::new();
                    for atv in rdn.iter() {
                        let Ok(value) = atv.as_str() else {
                            return false;
                        };
                        set.push((atv.attr_type().to_id_string(), normalise(value)));
                    }
                    set.sort();
                    seen.push(set);
                }
                &seen == expected
            }
            san => {
                let Ok(Some(ext)) = cert.subject_alternative_name() else {
                    return false;
                };
                ext.value
                    .general_names
                    .iter()
                    .any(|name| match (san, name) {
                        (Subject::Dns(want), GeneralName::DNSName(got)) => {
                            got.eq_ignore_ascii_case(want)
                        }
                        (Subject::Uri(want), GeneralName::URI(got)) => got == want,
                        (Subject::Email(want), GeneralName::RFC822Name(got)) => got == want,
                        (Subject::Ip(want), GeneralName::IPAddress(got)) => {
                            ip_of(got) == Some(*want)
                        }
                        _ => false,
                    })
            }
        }
    }
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn attribute_oid(name: &str) -> Option<String> {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        let arcs: Vec<&str> = name.split('.').collect();
        let ok = arcs.len() >= 2
            && arcs.iter().all(|a| {
                !a.is_empty()
                    && a.len() <= 20
                    && a.bytes().all(|b| b.is_ascii_digit())
                    && (a.len() == 1 || !a.starts_with('0'))
            });
        return ok.then(|| name.to_owned());
    }
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, oid)| (*oid).to_owned())
}

fn hex(c: char) -> Option<u8> {
    c.to_digit(16).map(|d| d as u8)
}

/// X.520 caseIgnoreMatch, near enough: lower case, runs of spaces as one, none at the ends.
fn normalise(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params(&mut p);
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    fn dn_cert() -> Vec<u8> {
        cert(|p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CountryName, "DE");
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "Example, Inc.");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "client  A");
        })
    }

    #[test]
    fn a_dn_matches_in_rfc_4514_order_without_case_or_extra_spaces() {
        let der = dn_cert();
        for yes in [
            "CN=client A,O=Example\\, Inc.,C=DE",
            "cn = Client  a , o=EXAMPLE\\2C INC. , c=de",
            "2.5.4.3=client a,2.5.4.10=example\\, inc.,2.5.4.6=DE",
        ] {
            assert!(Subject::dn(yes).expect(yes).matches(&der), "{yes}");
        }
        for no in [
            "C=DE,O=Example\\, Inc.,CN=client A", // certificate order, not RFC 4514's
            "CN=client A,O=Example\\, Inc.",      // a prefix
            "CN=client A,O=Example\\, Inc.,C=DE,DC=x",
            "CN=client B,O=Example\\, Inc.,C=DE",
            "CN=client A+O=Example\\, Inc.,C=DE",
        ] {
            assert!(!Subject::dn(no).expect(no).matches(&der), "{no}");
        }
    }

    #[test]
    fn multi_valued_rdns_match_in_any_order() {
        let a = Subject::dn("CN=x+O=y,C=DE").expect("dn");
        let b = Subject::dn("O=y+CN=x,C=DE").expect("dn");
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_dns_are_refused() {
        for bad in [
            "", "CN", "CN=", "XX=y", "CN=a,", "CN=#04", "CN=a\\", "CN=a\\zz", "CN=a;O=b",
            "CN=\"a\"", "1.=a", "01.2=a", "CN=\\ff",
        ] {
            assert!(Subject::dn(bad).is_err(), "{bad:?}");
        }
        assert!(Subject::dn(&"CN=a,".repeat(1000)).is_err());
        // Spaces around a value, escaped or not, do not count (caseIgnoreMatch).
        assert_eq!(Subject::dn("CN=a\\ "), Subject::dn("CN= a"));
    }

    #[test]
    fn subject_alternative_names_match_by_kind() {
        let der = cert(|p| {
            p.subject_alt_names = vec![
                rcgen::SanType::DnsName("Client.Example.test".try_into().expect("dns")),
                rcgen::SanType::URI("spiffe://example.test/client".try_into().expect("uri")),
                rcgen::SanType::IpAddress("10.0.0.7".parse().expect("ip")),
                rcgen::SanType::Rfc822Name("ops@example.test".try_into().expect("email")),
            ];
        });
        for (kind, value, want) in [
            ("san_dns", "client.example.TEST", true),
            ("san_dns", "other.example.test", false),
            ("san_uri", "spiffe://example.test/client", true),
            ("san_uri", "spiffe://example.test/other", false),
            ("san_ip", "10.0.0.7", true),
            ("san_ip", "10.0.0.8", false),
            ("san_email", "ops@example.test", true),
            ("san_email", "client.example.test", false),
            ("san_dns", "spiffe://example.test/client", false),
        ] {
            let s = Subject::parse(kind, value).expect("subject");
            assert_eq!(s.matches(&der), want, "{kind} {value}");
        }
        assert!(
            !Subject::parse("san_dns", "a")
                .expect("s")
                .matches(b"\x30\x00")
        );
        assert!(Subject::parse("san_ip", "nope").is_err());
        assert!(Subject::parse("san_uri", " ").is_err());
    }
}
