//! Real S3-compatible servers on loopback, for repo tests.
//!
//! - [`S3Server::s3s_fs`]: the `s3s-fs` server in-process (SigV4 enforced, `If-None-Match`
//!   enforced, objects in a temporary directory). It can be stopped and restarted on the same
//!   port, keeping its objects, to simulate an outage.
//! - [`S3Server::moto`]: moto's server (`.cache/venv/bin/moto_server`, installed by
//!   `scripts/install-test-deps.sh`) as a child process. It does not check signatures and keeps
//!   objects in memory.
//!
//! Both give an endpoint URL, credentials and a bucket that already exists.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// The test access key.
pub const ACCESS_KEY: &str = "pitr-test-access";
/// The test secret key.
pub const SECRET_KEY: &str = "pitr-test-secret-key";
/// The bucket every server starts with.
pub const BUCKET: &str = "pitr-test";

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    addr: SocketAddr,
    kind: Kind,
    /// Which implementation, for messages.
    pub name: &'static str,
}

#[derive(Debug)]
enum Kind {
    Fs {
        _dir: tempfile::TempDir,
        root: PathBuf,
        running: Option<FsRunning>,
    },
    Moto {
        child: Child,
    },
}

#[derive(Debug)]
struct FsRunning {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

fn wait_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_fs(root: &Path, addr: SocketAddr) -> FsRunning {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = b.build();
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            // Rebinding the same port right after a stop: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(10);
            let listener = loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("s3s-fs cannot bind {addr}: {e}"),
                }
            };
            let _ = ready_tx.send(());
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        let svc = service.clone();
                        conns.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                    _ = stop_rx.changed() => break,
                }
            }
            // An outage: every open connection is cut, not drained.
            conns.abort_all();
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("s3s-fs did not start");
    FsRunning { stop, thread }
}

impl S3Server {
    /// s3s-fs, in-process, with the test credentials and bucket.
    pub fn s3s_fs() -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join(BUCKET)).expect("bucket dir");
        let addr = free_port();
        let running = Some(start_fs(&root, addr));
        S3Server {
            addr,
            kind: Kind::Fs {
                _dir: dir,
                root,
                running,
            },
            name: "s3s-fs",
        }
    }

    /// moto's server as a child process, with the test bucket created. Panics, naming the
    /// install script, when moto is not installed.
    pub fn moto() -> S3Server {
        let bin = crate::workspace_root().join(".cache/venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run ./scripts/install-test-deps.sh",
            bin.display()
        );
        let addr = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let s = S3Server {
            addr,
            kind: Kind::Moto { child },
            name: "moto",
        };
        wait_port(addr, "moto_server");
        let (status, body) = http(addr, "PUT", &format!("/{BUCKET}"));
        assert!(status == 200, "moto: create bucket: {status} {body}");
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `--repo` URL for this server (`prefix` may be empty). Credentials come from
    /// [`S3Server::env`] (or [`ACCESS_KEY`] / [`SECRET_KEY`] in-process).
    pub fn repo_url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint={}&region=us-east-1",
            self.endpoint()
        )
    }

    /// Environment for a `pitr` process using this server (endpoint, credentials, region).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            // Never read the developer's own AWS config in tests.
            ("AWS_CONFIG_FILE", "/nonexistent/pitr-test".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/pitr-test".into(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Stops the server, cutting open connections (s3s-fs only; objects are kept).
    pub fn stop(&mut self) {
        match &mut self.kind {
            Kind::Fs { running, .. } => {
                if let Some(r) = running.take() {
                    let _ = r.stop.send(true);
                    let _ = r.thread.join();
                }
            }
            Kind::Moto { .. } => panic!("moto keeps objects in memory: stop only s3s-fs"),
        }
    }

    /// Starts a stopped server again on the same port, with the same objects.
    pub fn restart(&mut self) {
        let addr = self.addr;
        if let Kind::Fs { root, running, .. } = &mut self.kind
            && running.is_none()
        {
            *running = Some(start_fs(root, addr));
        }
    }

    /// Where s3s-fs keeps the bucket's objects (one file per object).
    pub fn bucket_dir(&self) -> Option<PathBuf> {
        match &self.kind {
            Kind::Fs { root, .. } => Some(root.join(BUCKET)),
            Kind::Moto { .. } => None,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Fs { .. } => self.stop(),
            Kind::Moto { child } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A bare HTTP/1.1 request without a body (moto accepts unsigned requests).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}
