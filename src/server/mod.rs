//! The metrics and health HTTP endpoints of the sidecar (hyper, HTTP/1.1).
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text (format 0.0.4): positions, lag, uploads, reconnects, timeline |
//! | `/livez` | 200 while the process runs (a liveness probe: restarting cures nothing `/healthz` reports) |
//! | `/healthz` | 200 while the process is running and its archiver works; 503 once it has failed (liveness: restart me) |
//! | `/readyz` | 200 while streaming and the archive lag is within bounds: WAL is being archived now; 503 otherwise (readiness) |

pub(crate) mod schedule;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

use crate::shutdown::Shutdown;

async fn handle(
    req: Request<hyper::body::Incoming>,
    m: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        // The process runs and answers: for a Kubernetes liveness probe (a restart cures
        // nothing /healthz reports: the state is read back from the repo).
        "/livez" => (StatusCode::OK, "text/plain", "alive\n".to_owned()),
        "/healthz" => match m.health() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        "/readyz" => match m.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /livez, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address.
pub(crate) async fn serve(
    addr: SocketAddr,
    m: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                acc = listener.accept() => {
                    let Ok((stream, _)) = acc else { continue };
                    let m = m.clone();
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let svc = hyper::service::service_fn(move |req| handle(req, m.clone()));
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                    });
                }
            }
        }
    });
    Ok(local)
}
