//! A real Redis for the cluster tests: Debian's `redis-server` on a free
//! port of 127.0.0.1, without persistence (an empty database at every
//! start), killed with SIGKILL on demand or when dropped, and restarted
//! empty on the same port.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the Debian package installs the server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How long a start may take before the test fails.
const START_WAIT: Duration = Duration::from_secs(10);

pub struct Redis {
    pub port: u16,
    /// Its working directory and log file, removed on drop.
    dir: PathBuf,
    /// The password of the default user (`requirepass`), if any.
    password: Option<String>,
    child: Option<tokio::process::Child>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers PING. A
    /// port taken between the choice and the bind is retried with another.
    pub async fn start(tag: &str) -> Redis {
        Redis::start_inner(tag, None).await
    }

    /// Like [`Redis::start`], with a password for the default user
    /// (`--requirepass`), kept across restarts.
    pub async fn start_with_password(tag: &str, password: &str) -> Redis {
        Redis::start_inner(tag, Some(password.to_string())).await
    }

    async fn start_inner(tag: &str, password: Option<String>) -> Redis {
        let mut r = Redis {
            port: 0,
            dir: super::temp_dir(&format!("redis-{tag}")),
            password,
            child: None,
        };
        for _ in 0..5 {
            r.port = super::free_port();
            if r.spawn_and_wait().await {
                return r;
            }
        }
        panic!("redis-server did not start on any free port:\n{}", r.log());
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether a server answers PING with +PONG on the port now.
    pub async fn ping(&self) -> bool {
        ping_auth(self.port, self.password.as_deref()).await
    }

    /// One inline command on this server (authenticated when it has a
    /// password): the first line of its reply, for checks such as `DBSIZE`.
    pub async fn command(&self, cmd: &str) -> Option<String> {
        let mut cmds = Vec::new();
        let auth;
        if let Some(pw) = &self.password {
            auth = format!("AUTH {pw}");
            cmds.push(auth.as_str());
        }
        cmds.push(cmd);
        commands(self.port, &cmds).await?.pop()
    }

    /// Kills the server with SIGKILL and waits until the process is gone
    /// (its port then refuses connections).
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        child.start_kill().expect("SIGKILL to redis-server");
        tokio::time::timeout(START_WAIT, child.wait())
            .await
            .expect("redis-server ends after SIGKILL")
            .unwrap();
    }

    /// Starts a new, empty server on the same port (after [`Redis::kill`])
    /// and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "kill redis-server before restarting it"
        );
        // The old listener is gone with its process; a port in TIME_WAIT
        // is rebound (redis sets SO_REUSEADDR), so one try is enough.
        assert!(
            self.spawn_and_wait().await,
            "redis-server did not restart on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Spawns the server on `self.port`; true once it answers PING, false
    /// if it exited first (e.g. the port was taken).
    async fn spawn_and_wait(&mut self) -> bool {
        let mut cmd = tokio::process::Command::new(REDIS_SERVER);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{REDIS_SERVER}: {e} (install the redis-server package)"));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.ping().await {
                return true;
            }
            let child = self.child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            assert!(
                start.elapsed() < START_WAIT,
                "redis-server on port {} does not answer PING:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to 127.0.0.1:`port`, sends PING, expects +PONG (each step
/// bounded to one second).
pub async fn ping(port: u16) -> bool {
    ping_auth(port, None).await
}

/// [`ping`], first authenticating with `password` when given.
async fn ping_auth(port: u16, password: Option<&str>) -> bool {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let (request, expected) = match password {
            None => ("PING\r\n".to_string(), "+PONG\r\n"),
            Some(pw) => (format!("AUTH {pw}\r\nPING\r\n"), "+OK\r\n+PONG\r\n"),
        };
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; expected.len()];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf == expected.as_bytes())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Some(true))
    )
}

/// Sends inline commands on one connection and returns the first line of
/// each reply (bounded to one second in all).
pub async fn commands(port: u16, cmds: &[&str]) -> Option<Vec<String>> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        for cmd in cmds {
            s.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
        }
        let mut replies = Vec::new();
        for _ in cmds {
            let mut reply = Vec::new();
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\r\n") {
                s.read_exact(&mut byte).await.ok()?;
                reply.push(byte[0]);
            }
            reply.truncate(reply.len() - 2);
            replies.push(String::from_utf8(reply).ok()?);
        }
        Some(replies)
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}
