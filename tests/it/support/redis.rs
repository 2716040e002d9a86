//! A private `redis-server` for one test: its own port and directory, killed on drop.
//!
//! AOF is on (`appendfsync always`), so [`RedisServer::restart`] after [`RedisServer::kill`]
//! brings the data back, as a production Redis with AOF would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: super::free_port(),
            dir: super::temp_dir("redis"),
            child: None,
        };
        server.spawn();
        server
    }

    /// Everything the server wrote to disk: its append-only files (every write it ever took,
    /// as sent) and an RDB snapshot taken now (`SAVE`), concatenated.
    pub fn dump_files(&self) -> Vec<u8> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SAVE"])
            .output()
            .expect("redis-cli must be installed (the README's test command installs it)");
        assert!(out.status.success(), "redis-cli SAVE: {out:?}");
        let mut files = vec![self.dir.join("dump.rdb")];
        if let Ok(aof) = std::fs::read_dir(self.dir.join("appendonlydir")) {
            files.extend(aof.flatten().map(|e| e.path()));
        }
        let mut bytes = Vec::new();
        for f in files {
            bytes.extend(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        }
        bytes
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers PING right now.
    pub fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL: the server dies as in a crash, without a goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (data comes back from the AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
