//! Ports for the servers tests start (redis-server nodes, sentinels, the proxy binary), which
//! must be chosen before the server binds them.
//!
//! A port the kernel handed out for `bind(…:0)` and then released is in the ephemeral range,
//! which every outgoing connection draws its local port from: under the full suite's load (a
//! redis-cli per probe, the proxy's Redis and upstream connections) one of them can take it
//! before the server binds, and the server fails with "Address already in use" (CI,
//! 2026-12-03). So ports come from below the ephemeral range, and each is reserved across the
//! suite's test processes (nextest runs each test in a process of its own) by a UDP socket this
//! process binds to the same number and keeps until it exits: another test process cannot bind
//! it, while the server's TCP listener can. A port is handed out only if a TCP listener can
//! also be bound to it right now.

use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the well-known and most registered services' ports.
const FIRST: u16 = 20_000;

/// The reservations of this process: one UDP socket per port it was given.
static HELD: Mutex<Vec<UdpSocket>> = Mutex::new(Vec::new());

/// `n` distinct ports, each free and reserved for this process.
pub fn take(n: usize) -> Vec<u16> {
    (0..n).map(|_| one()).collect()
}

fn one() -> u16 {
    let (first, end) = range();
    let span = u32::from(end - first);
    // Start somewhere different in each process (and each call) so processes rarely contend.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919));
    for i in 0..span {
        let port = first + ((seed.wrapping_add(i)) % span) as u16;
        let Ok(reservation) = UdpSocket::bind(("127.0.0.1", port)) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reservation);
        return port;
    }
    panic!("no free port in {first}..{end}");
}

/// `FIRST` up to the start of the kernel's ephemeral range.
fn range() -> (u16, u16) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    assert!(
        low > FIRST + 1_000,
        "the ephemeral port range starts at {low}: too low for the test rig's ports"
    );
    (FIRST, low)
}

#[test]
fn ports_are_distinct_below_the_ephemeral_range_and_reserved() {
    let ports = take(20);
    let (_, low) = range();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "{ports:?}");
    assert!(
        ports.iter().all(|&p| (FIRST..low).contains(&p)),
        "{ports:?}"
    );
    for p in ports {
        // Another test process cannot reserve it, and the server can still listen on it.
        assert!(
            UdpSocket::bind(("127.0.0.1", p)).is_err(),
            "port {p} is not reserved"
        );
        TcpListener::bind(("127.0.0.1", p)).expect("a TCP listener binds a reserved port");
    }
}
