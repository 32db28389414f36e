//! `FrappeClient` against a tiny local HTTP server with canned answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

/// What the server saw: path and query, and headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;
type Handler = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request with `handler(path_and_query)`; a status of 0 never answers.
async fn server(handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let handler: Handler = Arc::new(handler);
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, handler) = (seen.clone(), handler.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, handler) = (seen.clone(), handler.clone());
                    async move { Ok::<_, Infallible>(answer(req, &seen, &handler).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        }
    });
    Server { addr, seen, task }
}

async fn answer(req: Request<Incoming>, seen: &Seen, handler: &Handler) -> Response<Full<Bytes>> {
    let target = req.uri().path_and_query().map_or("", |pq| pq.as_str()).to_owned();
    seen.lock().unwrap().push((target.clone(), req.headers().clone()));
    let (status, body) = handler(&target);
    if status == 0 {
        std::future::pending::<()>().await;
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

fn client(server: &Server, site_name: Option<&str>) -> FrappeClient {
    let url: Uri = format!("http://{}/", server.addr).parse().unwrap();
    FrappeClient::new(&url, "erp.example.com", site_name, Duration::from_millis(500)).unwrap()
}

fn token() -> Secret {
    Secret::new("synckey00000001:syncsecret00001".into())
}

const CLIENT_HEADER: &str = "token 0a1b2c3d4e5f607:s3cr3tvalue0001";

#[tokio::test]
async fn whoami_sends_the_client_header_host_and_site() {
    let server = server(|_| (200, r#"{"message":"api.user@example.com"}"#.into())).await;
    let client = client(&server, Some("erp.example.com"));
    let user = client.whoami(&HeaderValue::from_static(CLIENT_HEADER)).await.unwrap();
    assert_eq!(user, "api.user@example.com");
    let seen = server.seen.lock().unwrap();
    let (target, headers) = &seen[0];
    assert_eq!(target, WHOAMI_PATH);
    assert_eq!(headers[AUTHORIZATION], CLIENT_HEADER);
    assert_eq!(headers[HOST], "erp.example.com");
    assert_eq!(headers["x-frappe-site-name"], "erp.example.com");
}

#[tokio::test]
async fn whoami_maps_statuses() {
    const NO_USER: &str = "whoami answered 200 without a user in `message`";
    for (status, body, expected) in [
        (401, r#"{"exc_type":"AuthenticationError"}"#, Err(VerifyError::Rejected)),
        (403, r#"{"exc_type":"PermissionError"}"#, Err(VerifyError::Rejected)),
        (200, r#"{"message":"Guest"}"#, Err(VerifyError::Rejected)),
        (502, "", Err(VerifyError::Unavailable("whoami answered HTTP 502".into()))),
        (404, "<html>", Err(VerifyError::Unavailable("whoami answered HTTP 404".into()))),
        (200, "not json", Err(VerifyError::Unavailable(NO_USER.into()))),
        (200, r#"{"message":null}"#, Err(VerifyError::Unavailable(NO_USER.into()))),
    ] {
        let server = server(move |_| (status, body.into())).await;
        let client = client(&server, None);
        assert_eq!(
            client.whoami(&HeaderValue::from_static(CLIENT_HEADER)).await,
            expected,
            "{status} {body}"
        );
        assert!(!server.seen.lock().unwrap()[0].1.contains_key("x-frappe-site-name"));
    }
}

#[tokio::test]
async fn whoami_timeout_and_refused_are_unavailable_without_secrets() {
    let server = server(|_| (0, String::new())).await;
    let client = client(&server, None);
    match client.whoami(&HeaderValue::from_static(CLIENT_HEADER)).await {
        Err(VerifyError::Unavailable(why)) => {
            assert!(why.contains("did not answer within 500ms"), "{why}");
            assert!(!why.contains("s3cr3t"));
        }
        other => panic!("{other:?}"),
    }
    let addr = server.addr;
    drop(server);
    tokio::task::yield_now().await;
    let url: Uri = format!("http://{addr}").parse().unwrap();
    let closed = FrappeClient::new(&url, "h", None, Duration::from_millis(500)).unwrap();
    match closed.whoami(&HeaderValue::from_static(CLIENT_HEADER)).await {
        Err(VerifyError::Unavailable(why)) => {
            assert!(why.contains("cannot connect") && !why.contains("s3cr3t"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

fn rows(start: usize, count: usize) -> String {
    let rows: Vec<String> = (start..start + count)
        .map(|i| {
            format!(
                r#"{{"name":"u{i:04}@x","enabled":{},"api_key":"K{i:04}","modified":"2026-11-28 20:38:{:02}.1","restrict_ip":{}}}"#,
                i % 2,
                i % 60,
                if i == 1 { r#""10.1.2.3""# } else { "null" },
            )
        })
        .collect();
    format!(r#"{{"data":[{}]}}"#, rows.join(","))
}

fn query_value(target: &str, name: &str) -> String {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let raw = query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap_or("");
    percent_encoding::percent_decode_str(raw).decode_utf8().unwrap().into_owned()
}

#[tokio::test]
async fn list_users_pages_until_a_short_page() {
    let server = server(|target| {
        let start: usize = query_value(target, "limit_start").parse().unwrap();
        let count = if start < 1000 { PAGE_SIZE } else { 7 };
        (200, rows(start, count))
    })
    .await;
    let users = client(&server, None).list_users(&token()).await.unwrap();
    assert_eq!(users.len(), 1007);
    assert_eq!(users[1].restrict_ip.as_deref(), Some("10.1.2.3"));
    assert!(users[1].enabled && !users[2].enabled);
    assert_eq!(users[3].api_key.as_deref(), Some("K0003"));
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let (target, headers) = &seen[1];
    assert!(target.starts_with("/api/resource/User?"), "{target}");
    assert_eq!(query_value(target, "fields"), USER_FIELDS);
    assert_eq!(query_value(target, "filters"), USER_FILTERS);
    assert_eq!(query_value(target, "limit_start"), "500");
    assert_eq!(query_value(target, "limit_page_length"), "500");
    assert_eq!(query_value(target, "order_by"), "name asc");
    assert_eq!(headers[AUTHORIZATION], "token synckey00000001:syncsecret00001");
}

#[tokio::test]
async fn list_users_errors_name_the_cause() {
    for (status, body, expected) in [
        (401, "{}", SyncError::Unauthorized),
        (403, "{}", SyncError::Forbidden),
        (500, "{}", SyncError::Status(500)),
        (200, r#"{"data":[{"name":"a","enabled":1,"modified":"m"}]}"#, SyncError::ApiKeyHidden),
        (
            200,
            r#"{"data":[{"name":"a","enabled":1,"api_key":"k","modified":"m"}]}"#,
            SyncError::RestrictIpHidden,
        ),
    ] {
        let server = server(move |_| (status, body.into())).await;
        assert_eq!(client(&server, None).list_users(&token()).await.unwrap_err(), expected);
    }
    let server = server(|_| (200, "<html>".into())).await;
    let err = client(&server, None).list_users(&token()).await.unwrap_err();
    assert!(matches!(err, SyncError::BadResponse(_)), "{err}");
    assert!(!err.to_string().contains("syncsecret"));
}

#[tokio::test]
async fn get_user_reads_one_document() {
    let server = server(|target| {
        if target.ends_with("/gone%2Euser") {
            (404, r#"{"exc_type":"DoesNotExistError"}"#.into())
        } else {
            // The document API leaves null fields out (transcript 06c).
            (200, r#"{"data":{"name":"api.user@example.com","enabled":0,"api_key":"KEY","modified":"m1","roles":[]}}"#.into())
        }
    })
    .await;
    let client = client(&server, None);
    let user = client.get_user(&token(), "api.user@example.com").await.unwrap().unwrap();
    assert_eq!(
        (&*user.name, user.enabled, user.api_key.as_deref()),
        ("api.user@example.com", false, Some("KEY"))
    );
    assert_eq!(user.restrict_ip, None);
    assert_eq!(server.seen.lock().unwrap()[0].0, "/api/resource/User/api%2Euser@example%2Ecom");
    assert_eq!(client.get_user(&token(), "gone.user").await.unwrap(), None);
    assert!(matches!(client.get_user(&token(), "..").await, Err(SyncError::BadName(_))));
}

#[test]
fn base_url_drops_userinfo_and_trailing_slash() {
    let uri: Uri = "https://erp.example.com:8443/frappe/".parse().unwrap();
    assert_eq!(base_url(&uri).unwrap(), "https://erp.example.com:8443/frappe");
    let uri: Uri = "http://u:p@127.0.0.1:8000".parse().unwrap();
    assert_eq!(base_url(&uri).unwrap(), "http://127.0.0.1:8000");
}

const ADMIN_HEADER: &str = "token 1a1a1a1a1a1a1a1:2b2b2b2b2b2b2b2";

#[tokio::test]
async fn read_own_user_uses_the_client_header_and_maps_statuses() {
    let doc = r#"{"data":{"name":"Administrator","enabled":1,"modified":"2024-10-15 10:00:00.000000","restrict_ip":"10.1.2.3","doctype":"User"}}"#;
    let ok = server(move |_| (200, doc.into())).await;
    let user = client(&ok, None)
        .read_own_user(&HeaderValue::from_static(ADMIN_HEADER), "Administrator")
        .await
        .unwrap();
    assert_eq!(
        (&*user.name, user.enabled, user.restrict_ip.as_deref()),
        ("Administrator", true, Some("10.1.2.3"))
    );
    {
        let seen = ok.seen.lock().unwrap();
        assert_eq!(seen[0].0, "/api/resource/User/Administrator");
        assert_eq!(seen[0].1[AUTHORIZATION], ADMIN_HEADER, "its own credentials, not the sync token");
    }
    for (status, body, rejected) in [
        (401, r#"{"exc_type":"AuthenticationError"}"#, true),
        (403, r#"{"exc_type":"PermissionError"}"#, false),
        (500, "", false),
        (200, "not json", false),
        (200, r#"{"data":{"name":"someone.else","enabled":1,"modified":"m"}}"#, false),
    ] {
        let answering = server(move |_| (status, body.into())).await;
        let result = client(&answering, None)
            .read_own_user(&HeaderValue::from_static(ADMIN_HEADER), "Administrator")
            .await;
        match result {
            Err(VerifyError::Rejected) => assert!(rejected, "{status} {body}"),
            Err(VerifyError::Unavailable(why)) => {
                assert!(!rejected, "{status} {body}: {why}");
                assert!(
                    why.contains("reading User Administrator as itself") && !why.contains("2b2b2b"),
                    "{why}"
                );
            }
            Ok(user) => panic!("{status} {body}: {user:?}"),
        }
    }
}
