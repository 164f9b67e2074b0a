//! A TCP proxy per directed link, so a scenario can cut, half-cut, blackhole or slow the
//! traffic between two nodes and heal it again, without touching the processes.
//!
//! A node is told to reach a peer at the proxy's address; the proxy forwards to the peer.
//! Mode changes apply at once to new and to open connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LinkMode {
    /// Bytes flow both ways.
    Pass,
    /// Connections are refused and open ones are closed: a clean network cut.
    Cut,
    /// Requests reach the server; its answers are dropped (one-way cut).
    DropReplies,
    /// Requests are dropped before the server; nothing comes back (one-way cut).
    DropRequests,
    /// Connections are accepted and read, but nothing is forwarded or answered.
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) mode: LinkMode,
    pub(crate) delay_ms: u64,
}

impl State {
    pub(crate) const PASS: State = State {
        mode: LinkMode::Pass,
        delay_ms: 0,
    };
}

/// One proxied link. Dropping the handle does not stop it; dropping the runtime does.
#[derive(Debug, Clone)]
pub struct LinkProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    bytes: Arc<AtomicU64>,
}

impl LinkProxy {
    /// Listen on a free loopback port and forward to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(State {
            mode: LinkMode::Pass,
            delay_ms: 0,
        });
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let rx = rx.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, target, rx, counted).await;
                });
            }
        });
        Ok(LinkProxy {
            addr,
            target,
            state: tx,
            bytes,
        })
    }

    /// Where nodes must connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn set_mode(&self, mode: LinkMode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    pub fn mode(&self) -> LinkMode {
        self.state.borrow().mode
    }

    /// Add latency to every chunk forwarded (either way).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .send_modify(|s| s.delay_ms = delay.as_millis() as u64);
    }

    /// Back to a clean link.
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.mode = LinkMode::Pass;
            s.delay_ms = 0;
        });
    }

    /// Bytes forwarded so far (both ways).
    pub fn bytes_forwarded(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Forward one accepted connection to `target` under the link's state. Returns when either
/// side closes, the link is cut, or the link heals after bytes were dropped (the byte stream
/// is then broken, so the connection is closed and the peer reconnects cleanly).
pub(crate) async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<State>,
    bytes: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let first = *state.borrow();
    match first.mode {
        LinkMode::Cut => return Ok(()), // closed at once
        LinkMode::Blackhole => return swallow(client, state).await,
        _ => {}
    }
    let server = TcpStream::connect(target).await?;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let dropped = Arc::new(AtomicBool::new(false));
    let up = pump(cr, sw, state.clone(), bytes.clone(), true, dropped.clone());
    let down = pump(sr, cw, state.clone(), bytes, false, dropped.clone());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = async {
            while state.changed().await.is_ok() {
                let mode = state.borrow().mode;
                // A cut closes open connections too; so does healing a stream with holes.
                if mode == LinkMode::Cut
                    || (mode == LinkMode::Pass && dropped.load(Ordering::Relaxed))
                {
                    break;
                }
            }
        } => {}
    }
    Ok(())
}

/// Read and discard until the mode leaves Blackhole (then close: the peer reconnects).
async fn swallow(mut conn: TcpStream, mut state: watch::Receiver<State>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = conn.read(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            changed = state.changed() => {
                if changed.is_err() || state.borrow().mode != LinkMode::Blackhole {
                    return Ok(());
                }
            }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<State>,
    bytes: Arc<AtomicU64>,
    upstream: bool,
    dropped: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let s = *state.borrow();
        if s.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.delay_ms)).await; // the injected latency
        }
        let drop_it = match s.mode {
            LinkMode::Pass => false,
            LinkMode::Cut => return Ok(()),
            LinkMode::DropReplies => !upstream,
            LinkMode::DropRequests => upstream,
            LinkMode::Blackhole => true,
        };
        if drop_it {
            dropped.store(true, Ordering::Relaxed);
        } else {
            to.write_all(&buf[..n]).await?;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send `ping` and wait up to `within` for the echo.
    async fn round_trip(addr: SocketAddr, within: Duration) -> Option<Duration> {
        let t = Instant::now();
        let mut c = TcpStream::connect(addr).await.ok()?;
        c.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, c.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"ping" => Some(t.elapsed()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn modes_cut_and_heal_traffic() {
        let echo = echo_server().await;
        let p = LinkProxy::start(echo).await.unwrap();
        let short = Duration::from_millis(300);
        assert!(round_trip(p.addr(), Duration::from_secs(5)).await.is_some());
        for mode in [
            LinkMode::Cut,
            LinkMode::DropReplies,
            LinkMode::DropRequests,
            LinkMode::Blackhole,
        ] {
            p.set_mode(mode);
            assert!(
                round_trip(p.addr(), short).await.is_none(),
                "{mode:?} let the echo through"
            );
            p.heal();
            assert!(
                round_trip(p.addr(), Duration::from_secs(5)).await.is_some(),
                "after {mode:?}"
            );
        }
        p.set_delay(Duration::from_millis(150));
        let rtt = round_trip(p.addr(), Duration::from_secs(5)).await.unwrap();
        assert!(
            rtt >= Duration::from_millis(300),
            "two delayed hops: {rtt:?}"
        );
        p.heal();
        assert!(p.bytes_forwarded() > 0);
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections() {
        let echo = echo_server().await;
        let p = LinkProxy::start(echo).await.unwrap();
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        p.set_mode(LinkMode::Cut);
        // The open connection is closed by the proxy: the read ends (EOF or reset).
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}
