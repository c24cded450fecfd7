//! A TCP proxy that can freeze: put between a controller and the apiserver to simulate a
//! connection that hangs (no error, no reset, nothing forwarded), the failure a timeout must
//! catch.
//!
//! While frozen, every connection (open ones and new ones) stays open and forwards nothing.
//! Connections that saw a freeze are closed when it thaws rather than resumed, so nothing the
//! client sent while frozen ever reaches the server; new connections after the thaw forward
//! normally. [`bytes_to_server`](FreezableProxy::bytes_to_server) counts what was forwarded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; stops accepting when dropped.
pub struct FreezableProxy {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    to_server: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, _) = watch::channel(false);
        let to_server = Arc::new(AtomicU64::new(0));
        let task = {
            let frozen = frozen.clone();
            let to_server = to_server.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(connection(
                        client,
                        target,
                        frozen.subscribe(),
                        to_server.clone(),
                    ));
                }
            })
        };
        FreezableProxy {
            addr,
            frozen,
            to_server,
            task,
        }
    }

    /// From now on nothing is forwarded, in either direction.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Closes the connections that saw the freeze; new ones forward again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Bytes forwarded from clients to the server so far.
    pub fn bytes_to_server(&self) -> u64 {
        self.to_server.load(Ordering::SeqCst)
    }

    /// A copy of `kubeconfig` whose clusters are reached through this proxy (the apiserver's
    /// certificate is for 127.0.0.1, so TLS still verifies), written to `path`.
    pub fn kubeconfig(&self, kubeconfig: &Path, path: &Path) {
        let mut config: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(kubeconfig).expect("reading the kubeconfig"),
        )
        .expect("the kubeconfig parses");
        for cluster in config["clusters"].as_array_mut().expect("clusters") {
            cluster["cluster"]["server"] = format!("https://{}", self.addr).into();
        }
        std::fs::write(
            path,
            serde_yaml::to_string(&config).expect("kubeconfig YAML"),
        )
        .expect("writing the kubeconfig");
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of the first cluster's server in `kubeconfig`.
pub fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).expect("reading the kubeconfig"))
            .expect("the kubeconfig parses");
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server address");
    let host_port = server.trim_start_matches("https://").trim_end_matches('/');
    host_port.parse().expect("the server is an IP:port")
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut frozen: watch::Receiver<bool>,
    to_server: Arc<AtomicU64>,
) {
    if *frozen.borrow_and_update() {
        hold(client, frozen).await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let none = Arc::new(AtomicU64::new(0));
    tokio::join!(
        pump(client_read, server_write, frozen.clone(), to_server),
        pump(server_read, client_write, frozen, none),
    );
}

/// Keeps a connection accepted while frozen open until the thaw, then closes it.
async fn hold(client: TcpStream, mut frozen: watch::Receiver<bool>) {
    let _ = frozen.wait_for(|f| !*f).await;
    drop(client);
}

/// Copies one direction until EOF; once a freeze is seen, forwards nothing more and closes at
/// the thaw.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    counted: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => 0,
        };
        if *frozen.borrow() {
            let _ = frozen.wait_for(|f| !*f).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counted.fetch_add(n as u64, Ordering::SeqCst);
    }
}
