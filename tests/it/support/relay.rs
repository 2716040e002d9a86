//! A TCP relay between the proxy and Redis that can lose an answer: it forwards a request to
//! Redis, lets Redis run it, and then cuts the connection before the answer gets back, as a
//! network failure at the worst moment would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Relay {
    pub port: u16,
    armed: Arc<Armed>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Armed {
    /// Lose the answer to the next request whose bytes contain this.
    needle: std::sync::Mutex<Option<Vec<u8>>>,
    set: AtomicBool,
    /// Answers lost so far.
    lost: AtomicUsize,
}

impl Relay {
    /// Relays 127.0.0.1:<new port> to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(Armed::default());
        let shared = armed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        relay(client, server, armed).await;
                    }
                });
            }
        });
        Relay { port, armed, task }
    }

    /// `redis://127.0.0.1:<relay port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The next request containing `needle` (e.g. `b"EVALSHA"`) reaches Redis and runs, and
    /// then its connection is cut before the answer is relayed.
    pub fn lose_next_answer(&self, needle: &[u8]) {
        *self.armed.needle.lock().expect("lock") = Some(needle.to_vec());
        self.armed.set.store(true, Ordering::SeqCst);
    }

    /// How many answers were lost.
    pub fn lost(&self) -> usize {
        self.armed.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<Armed>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set before an armed request is written, so its answer can never be relayed.
    let holding = Arc::new(AtomicBool::new(false));
    let hold = holding.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let lose = armed.set.load(Ordering::SeqCst) && {
                let mut needle = armed.needle.lock().expect("lock");
                let hit = needle
                    .as_deref()
                    .is_some_and(|n| chunk.windows(n.len()).any(|w| w == n));
                if hit {
                    *needle = None;
                    armed.set.store(false, Ordering::SeqCst);
                }
                hit
            };
            if lose {
                hold.store(true, Ordering::SeqCst);
                armed.lost.fetch_add(1, Ordering::SeqCst);
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
            if lose {
                // Let Redis run it, then cut both ways; its answer is dropped meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if holding.load(Ordering::SeqCst) || client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the connection (both halves are dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
