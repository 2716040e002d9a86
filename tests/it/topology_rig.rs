//! The topology rig itself (tests/support/topology.rs), proved with redis-cli only: clusters,
//! sentinels, TLS and ACL servers come up, and failovers are detected. If these fail, store
//! tests on those topologies cannot be trusted.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::topology::{Cluster, Options, Sentinel, Standalone, crc16_xmodem, slot_of};

/// Prints how long a step took (visible with `--no-capture`), for start-up budgets.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("{what}: {:?}", started.elapsed());
    value
}

#[test]
fn slot_of_follows_the_cluster_spec() {
    // The cluster spec's CRC16 check value.
    assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    assert_eq!(slot_of("foo"), 12182);
    // Hash tags: the spec's own examples.
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_eq!(slot_of("{user1000}.followers"), slot_of("user1000"));
    assert_eq!(slot_of("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
}

#[test]
fn cluster_comes_up_and_serves_a_hash_tagged_key() {
    let cluster = timed("cluster start", || Cluster::start(Options::default()));
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    assert_eq!(cluster.masters().len(), 3);
    let port = cluster.ports()[0];
    for key in ["{family-1}:token", "{family-2}:token", "foo", "{}x"] {
        let slot = cluster.cli(port, &["CLUSTER", "KEYSLOT", key]);
        assert_eq!(slot, slot_of(key).to_string(), "slot of {key}");
    }
    // Any node, following MOVED.
    for &port in &cluster.ports() {
        assert_eq!(cluster.cli(port, &["-c", "SET", "{fam}:a", "1"]), "OK");
        assert_eq!(cluster.cli(port, &["-c", "GET", "{fam}:a"]), "1");
    }
}

#[test]
fn cluster_promotes_a_replica_when_a_master_dies() {
    let mut cluster = Cluster::start(Options::default());
    let key = "{fam}:token";
    let master = cluster.master_of_slot(slot_of(key));
    let replica = cluster.replicas_of(master);
    assert_eq!(replica.len(), 1, "one replica per master");
    assert_eq!(cluster.cli(master, &["SET", key, "v1"]), "OK");
    // The write reaches the replica before the crash (replication is asynchronous): the
    // master counts its acknowledgement, and the replica itself holds the key (DBSIZE needs no
    // READONLY on a cluster replica).
    assert_eq!(cluster.cli(master, &["WAIT", "1", "2000"]), "1");
    assert_eq!(
        cluster.cli(replica[0], &["DBSIZE"]),
        "1",
        "the replica holds the key before the crash\n{}",
        cluster.diagnostics()
    );

    let killed = cluster.kill_master_of_slot(slot_of(key));
    assert_eq!(killed, master);
    timed("cluster failover", || {
        cluster.wait_healthy(Duration::from_secs(10))
    });
    let promoted = cluster.master_of_slot(slot_of(key));
    assert_eq!(promoted, replica[0], "{}", cluster.diagnostics());
    // Once, under CI's full parallel load, the promoted replica answered an empty GET right
    // after every node saw it serving the slot; the cause is not known. Poll briefly, and if it
    // persists fail with every node's log and view (the DBSIZE check above tells whether the
    // replica held the key before the crash).
    cluster.wait_value(promoted, key, "v1", Duration::from_secs(5));
    let other = cluster.live_ports()[0];
    assert_eq!(cluster.cli(other, &["-c", "GET", key]), "v1");

    // The old master comes back as a replica of the one that replaced it.
    cluster.restart_node(killed);
    cluster.wait_replica(killed, Duration::from_secs(10));
    assert_eq!(cluster.replicas_of(promoted), vec![killed]);
}

#[test]
fn sentinel_fails_over_to_the_replica() {
    let mut set = timed("sentinel start", || Sentinel::start(Options::default()));
    assert!(set.url().starts_with("redis+sentinel://127.0.0.1:"));
    assert!(set.url().ends_with("/mymaster"));
    let old = set.master_port();
    assert_eq!(set.cli(old, &["SET", "k", "v"]), "OK");
    assert_eq!(set.cli(old, &["WAIT", "1", "2000"]), "1");

    assert_eq!(set.kill_master(), old);
    let new = timed("sentinel failover", || {
        set.wait_failover(old, Duration::from_secs(15))
    });
    assert_ne!(new, old);
    assert!(set.cli(new, &["ROLE"]).starts_with("master"));
    assert_eq!(set.cli(new, &["GET", "k"]), "v");
    assert_eq!(set.master_port(), new);
}

/// `redis-cli --tls` trusting the test CA but presenting no client certificate.
fn ping_without_client_cert(server: &Standalone) -> std::process::Output {
    let tls = server.options().tls.as_ref().expect("TLS options");
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .arg("--tls")
        .arg("--cacert")
        .arg(&tls.files.ca)
        .args(["-e", "PING"])
        .output()
        .expect("run redis-cli")
}

#[test]
fn mutual_tls_standalone_requires_a_client_certificate() {
    let mut server = timed("mTLS standalone start", || {
        Standalone::start(Options::tls(true))
    });
    assert!(server.url().starts_with("rediss://127.0.0.1:"));
    assert_eq!(server.cli(&["PING"]), "PONG");

    let refused = ping_without_client_cert(&server);
    let stdout = String::from_utf8_lossy(&refused.stdout);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("without a client certificate: {stdout}{stderr}");
    assert!(!refused.status.success(), "no client cert: {stdout}");
    assert!(!stdout.contains("PONG"));

    let plaintext = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-e",
            "PING",
        ])
        .output()
        .expect("run redis-cli");
    assert!(!plaintext.status.success(), "plaintext on the TLS port");

    // The same client is welcome where client certificates are not required.
    let one_way = Standalone::start(Options::tls(false));
    let accepted = ping_without_client_cert(&one_way);
    assert_eq!(String::from_utf8_lossy(&accepted.stdout).trim(), "PONG");

    // Data survives a crash (AOF), over TLS as well.
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    server.kill();
    server.restart();
    assert_eq!(server.cli(&["GET", "k"]), "v");
}

#[test]
fn rustls_accepts_the_generated_certificates() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    use std::sync::Arc;

    // The store talks TLS through rustls (webpki), which is stricter than OpenSSL.
    let server = Standalone::start(Options::tls(true));
    let files = &server.options().tls.as_ref().expect("TLS options").files;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.ca).expect("read the CA"))
        .expect("a valid CA");
    let client_cert = CertificateDer::from_pem_file(&files.client_cert).expect("client cert");
    let client_key = PrivateKeyDer::from_pem_file(&files.client_key).expect("client key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert], client_key)
        .expect("a valid client certificate");
    let config = Arc::new(config);
    for name in ["127.0.0.1", "localhost"] {
        let server_name = ServerName::try_from(name).expect("server name").to_owned();
        let mut conn = rustls::ClientConnection::new(config.clone(), server_name).expect("conn");
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"PING\r\n").expect("send PING");
        let mut pong = [0u8; 7];
        tls.read_exact(&mut pong).expect("read the answer");
        assert_eq!(&pong, b"+PONG\r\n", "over TLS to {name}");
    }
}

#[test]
fn acl_user_works_and_default_user_is_refused() {
    let server = Standalone::start(Options::acl("app", "s3cret pass\"word"));
    assert_eq!(server.cli(&["ACL", "WHOAMI"]), "app");
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");

    let anonymous = Options::default().try_cli(server.port, &["GET", "k"]);
    let err = anonymous.expect_err("the default user is off");
    assert!(err.contains("NOAUTH"), "{err}");
    let wrong = Options::acl("app", "wrong").try_cli(server.port, &["GET", "k"]);
    let err = wrong.expect_err("wrong password");
    assert!(err.contains("WRONGPASS"), "{err}");
    let default = Options::acl("default", "").try_cli(server.port, &["GET", "k"]);
    assert!(default.is_err(), "the default user is refused: {default:?}");
}

#[test]
fn tls_and_acl_cluster_comes_up() {
    let opts = Options::tls(true).with_acl("app", "s3cret");
    let cluster = timed("TLS+ACL cluster start", || Cluster::start(opts));
    assert!(cluster.url().starts_with("rediss+cluster://127.0.0.1:"));
    let port = cluster.ports()[0];
    assert_eq!(cluster.cli(port, &["-c", "SET", "{fam}:a", "1"]), "OK");
    assert_eq!(cluster.cli(port, &["-c", "GET", "{fam}:a"]), "1");
    assert_eq!(cluster.cli(port, &["ACL", "WHOAMI"]), "app");
}

#[test]
fn tls_and_acl_sentinel_fails_over() {
    let opts = Options::tls(true).with_acl("app", "s3cret");
    let mut set = timed("TLS+ACL sentinel start", || Sentinel::start(opts));
    assert!(set.url().starts_with("rediss+sentinel://127.0.0.1:"));
    let master = set.master_port();
    let sentinel = set.sentinel_ports()[0];
    // Data nodes refuse the default user; sentinels take the ACL user or none.
    let tls_only = Options {
        acl: None,
        ..set.options().clone()
    };
    let err = tls_only
        .try_cli(master, &["PING"])
        .expect_err("default user");
    assert!(err.contains("NOAUTH"), "{err}");
    assert_eq!(tls_only.cli(sentinel, &["PING"]), "PONG");
    assert_eq!(set.cli(sentinel, &["ACL", "WHOAMI"]), "app");

    let old = set.kill_master();
    assert_eq!(old, master);
    let new = timed("TLS+ACL sentinel failover", || {
        set.wait_failover(old, Duration::from_secs(15))
    });
    assert!(set.cli(new, &["ROLE"]).starts_with("master"));
}

#[test]
fn sentinels_requiring_auth_still_fail_over() {
    let opts = Options::acl("app", "s3cret");
    let mut set = Sentinel::start_requiring_auth(opts);
    let sentinel = set.sentinel_ports()[0];
    let err = Options::default()
        .try_cli(sentinel, &["PING"])
        .expect_err("the sentinels' default user is off");
    assert!(err.contains("NOAUTH"), "{err}");
    // The vote between sentinels needs their peer links, which now need the ACL user.
    let old = set.kill_master();
    let new = set.wait_failover(old, Duration::from_secs(15));
    assert!(set.cli(new, &["ROLE"]).starts_with("master"));
}
