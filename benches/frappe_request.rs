//! The Frappe request model on the hot path: a typical `/api/resource` GET (head only), and a
//! 1 KiB urlencoded POST whose body is judged for `cmd` / `sid` / `run_method`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use frappe_gateway::frappe_request::{body_kind, FrappeRequest};
use http::{Method, Uri};

fn urlencoded_kib() -> Vec<u8> {
    let mut body = String::from("doctype=ToDo&name=TD-0001");
    let mut i = 0;
    while body.len() < 1024 {
        body.push_str(&format!("&field_{i}=value%20number%20{i}"));
        i += 1;
    }
    body.into_bytes()
}

fn model(c: &mut Criterion) {
    let mut group = c.benchmark_group("frappe_request");
    let get: Uri =
        "/api/resource/Sales%20Invoice?fields=%5B%22name%22%5D&limit_page_length=20".parse().unwrap();
    group.bench_function("resource_get_head", |b| {
        b.iter(|| FrappeRequest::from_head(black_box(&Method::GET), black_box(&get)).unwrap())
    });
    let post: Uri = "/api/method/frappe.client.set_value".parse().unwrap();
    let body = urlencoded_kib();
    let kind = body_kind(Some(b"application/x-www-form-urlencoded")).unwrap();
    group.bench_function("urlencoded_post_1kib", |b| {
        b.iter(|| {
            let mut request = FrappeRequest::from_head(&Method::POST, black_box(&post)).unwrap();
            request.judge_body(&Method::POST, &post, &kind, black_box(&body)).unwrap();
            request
        })
    });
    let json = br#"{"doctype":"ToDo","description":"a note from the mobile app","priority":"Medium","status":"Open"}"#;
    let json_kind = body_kind(Some(b"application/json")).unwrap();
    group.bench_function("json_post_small", |b| {
        b.iter(|| {
            let mut request = FrappeRequest::from_head(&Method::POST, black_box(&post)).unwrap();
            request.judge_body(&Method::POST, &post, &json_kind, black_box(json)).unwrap();
            request
        })
    });
    group.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);
