//! The whole pre-forward pipeline for an admitted request, no I/O: a bodyless
//! `GET /api/resource/ToDo` with `Authorization: token key:secret`, the key fresh in the cache.
//!
//! Timed, per request: what `pipeline::handle` does before the upstream call — the runtime
//! config loaded, `Ctx::begin` (request id, client IP, access-log record begun), head hygiene
//! and size limits, the Frappe request model, the route of the path, the network and route
//! allowlists, the cache hit (`fresh_hit`: parse, lookup, HMAC digest, constant-time compare),
//! the lockout + per-IP + per-key batch on the local limiter, the (empty) body phase, the routes
//! of what Frappe runs, the admission and the user policies. The clock stops when the verdict
//! is known, before anything is dropped.
//!
//! Not timed: hyper parsing the request (it comes from a real hyper HTTP/1.1 server over an
//! in-memory duplex, on the same thread, between iterations), the upstream call and the
//! response, `Ctx::finish`, and the access-log line (written when the response is complete; the
//! log is off here). The `…_and_drop` variant stops the clock after the request's state (head,
//! body, admission, the access-log record: its drop guard records the request's metrics) has
//! been dropped as well.
//!
//! The gateway's state is built from a `gateway.toml` like the sample one, as `app::start`
//! builds it; the one difference is the verifier a cache miss would ask (it accepts once, in
//! setup, and is never asked again: the bench checks).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use frappe_gateway::auth::{Verify, VerifyError};
use frappe_gateway::bench_api::Pipeline;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const AUTHORIZATION: &str = "token 0a1b2c3d4e5f607:9f8e7d6c5b4a321";
const USER: &str = "api.user@example.com";

/// What a request looks like on the wire (as curl sends it).
const REQUEST: &[u8] = b"GET /api/resource/ToDo HTTP/1.1\r\n\
Host: erp.example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Authorization: token 0a1b2c3d4e5f607:9f8e7d6c5b4a321\r\n\r\n";

/// The sample gateway.toml's policy without TLS: a token route under an allowlist, per-key and
/// per-IP limits the bench never reaches, the failed-auth lockout, the access log off.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://127.0.0.1:8000"

[network]
allow = ["0.0.0.0/0", "::/0"]

[rate_limit]
backend = "local"
per_key = "100000000/sec"
per_ip = "100000000/sec"
failed_auth_per_ip = "20/min"
lockout = "10m"

[[route]]
path = "/api/method/login"
auth = "public"
per_ip = "10/min"

[[route]]
path = "/api/"
auth = "token"
allow = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "192.168.0.0/16"]

[[route]]
path = "/api/method/frappe.client.get_password"
auth = "deny"

[log]
access = "off"
"#;

/// Accepts the first credential it is asked about, and nothing after.
#[derive(Default)]
struct AcceptOnce(AtomicU64);

impl Verify for AcceptOnce {
    fn verify<'a>(&'a self, _: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
        let first = self.0.fetch_add(1, Ordering::Relaxed) == 0;
        Box::pin(async move {
            match first {
                true => Ok(USER.to_owned()),
                false => Err(VerifyError::Unavailable("the bench verifies once".into())),
            }
        })
    }
}

/// Real `Request<Incoming>` values: a hyper HTTP/1.1 server on one end of an in-memory duplex,
/// a client writing pipelined requests on the other. The service hands each request out and
/// answers at once; a bodyless request's `Incoming` is empty and stays valid after that.
fn requests() -> mpsc::Receiver<Request<Incoming>> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(req).await;
                Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let _ =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).await;
    });
    let (mut read, mut write) = tokio::io::split(client);
    tokio::spawn(async move {
        let batch = REQUEST.repeat(32);
        while write.write_all(&batch).await.is_ok() {}
    });
    tokio::spawn(async move {
        let mut sink = vec![0; 64 * 1024];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    rx
}

fn pre_forward(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = frappe_gateway::config::parse(CONFIG, "bench.toml", &|_| None).expect("valid config");
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let (pipeline, requests) = runtime.block_on(async {
        let pipeline = Pipeline::build(config, Arc::new(AcceptOnce::default()), peer).await.unwrap();
        pipeline.authenticate(&HeaderValue::from_static(AUTHORIZATION)).await.unwrap();
        (pipeline, tokio::sync::Mutex::new(requests()))
    });
    let expect_admitted = |verdict: Result<Option<&str>, (u16, &str)>| {
        assert_eq!(verdict, Ok(Some(USER)), "the request is admitted as the cached key's user");
    };
    // No I/O: an admitted request passes without ever waiting (so nothing else runs on this
    // thread while the clock is running).
    runtime.block_on(async {
        let req = requests.lock().await.recv().await.unwrap();
        pipeline.admit(req, expect_admitted).now_or_never().expect("the pipeline completes in one poll");
    });
    let (pipeline, requests) = (&pipeline, &requests);

    let mut group = c.benchmark_group("pre_forward");
    group.bench_function("token_get_cached", |b| {
        b.to_async(&runtime).iter_custom(move |iters| async move {
            let mut requests = requests.lock().await;
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let req = requests.recv().await.expect("the connection keeps sending");
                let start = Instant::now();
                let end = pipeline
                    .admit(req, |verdict| {
                        let end = Instant::now();
                        expect_admitted(verdict);
                        end
                    })
                    .await;
                timed += end - start;
            }
            timed
        })
    });
    group.bench_function("token_get_cached_and_drop", |b| {
        b.to_async(&runtime).iter_custom(move |iters| async move {
            let mut requests = requests.lock().await;
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let req = requests.recv().await.expect("the connection keeps sending");
                let start = Instant::now();
                pipeline.admit(req, expect_admitted).await;
                timed += start.elapsed();
            }
            timed
        })
    });
    group.finish();
    assert_eq!(pipeline.verify_calls(), 1, "only the warm-up asked the verifier");
}

criterion_group!(benches, pre_forward);
criterion_main!(benches);
