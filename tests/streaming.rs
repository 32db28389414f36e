//! Acceptance 3: bodies stream. A 50 MiB upload and a 50 MiB download pass through the gateway
//! intact (SHA-256 equal end to end) over HTTP/1.1 and HTTP/2, while the gateway's resident
//! memory stays far below the body size: it never holds a body whole.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{
    https_client, rss_kib, Certs, ConfigBuilder, FakeFrappe, GatewayProcess, HttpVersion, RssSampler,
    PUBLIC_ROUTE,
};

const MIB: u64 = 1024 * 1024;
const BODY: u64 = 50 * MIB;
const CHUNK: usize = 64 * 1024;
/// Growth of the gateway's RSS over its warmed-up baseline that still counts as streaming.
const MAX_GROWTH_KIB: u64 = 40 * 1024;

/// Chunk `i` of the upload: a fixed pseudo-random block stamped with its index, generated on
/// demand so the test never holds the body either.
fn upload_chunk(block: &[u8], i: u64) -> Bytes {
    let mut chunk = block.to_vec();
    chunk[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(chunk)
}

fn random_block() -> Vec<u8> {
    let mut state = 0x5eed_u64;
    (0..CHUNK / 8)
        .flat_map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn upload(client: &reqwest::Client, base: &str, expected_version: reqwest::Version, len: u64) {
    let block = Arc::new(random_block());
    let chunks = len / CHUNK as u64;
    let mut expected = Sha256::new();
    for i in 0..chunks {
        expected.update(upload_chunk(&block, i));
    }
    let expected = hex(&expected.finalize());

    let body = stream::iter(0..chunks).map(move |i| Ok::<_, Infallible>(upload_chunk(&block, i)));
    let response = client
        .post(format!("{base}/__test/upload"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload through the gateway");
    assert_eq!(response.version(), expected_version);
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("upload JSON");
    assert_eq!(answer["len"], chunks * CHUNK as u64, "{answer}");
    assert_eq!(answer["sha256"], expected.as_str(), "the upstream received other bytes");
}

async fn download(client: &reqwest::Client, base: &str, expected_version: reqwest::Version, len: u64) {
    let response = client
        .get(format!("{base}/__test/download?bytes={len}"))
        .send()
        .await
        .expect("download through the gateway");
    assert_eq!(response.version(), expected_version);
    assert_eq!(response.status(), 200);
    let sent_sha = response.headers()["x-sha256"].to_str().expect("ascii").to_string();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download chunk");
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(received, len);
    assert_eq!(hex(&hasher.finalize()), sent_sha, "the client received other bytes than the upstream sent");
}

async fn streams_through_with_flat_memory(version: HttpVersion, expected: reqwest::Version) {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("server", &format!("max_body_bytes = {}", 64 * MIB))
        .extra(PUBLIC_ROUTE)
        .build();
    // Its own process, so its memory is measured apart from the test's.
    let gateway = GatewayProcess::start(&config, &[]).await;
    let client = https_client(&certs.ca_pem, version);
    let base = gateway.base_url();

    // Warm up pools, TLS sessions and buffers, then take the baseline.
    upload(&client, &base, expected, MIB).await;
    download(&client, &base, expected, MIB).await;
    let baseline = rss_kib(gateway.pid()).expect("gateway RSS");
    let sampler = RssSampler::start(gateway.pid());

    upload(&client, &base, expected, BODY).await;
    download(&client, &base, expected, BODY).await;

    let peak = sampler.peak().max(rss_kib(gateway.pid()).expect("gateway still running"));
    let growth = peak.saturating_sub(baseline);
    eprintln!("{version:?}: gateway RSS baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "gateway RSS grew by {growth} KiB (baseline {baseline} KiB, peak {peak} KiB) moving {} MiB bodies",
        BODY / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_50_mib_upload_and_download_stream_intact() {
    streams_through_with_flat_memory(HttpVersion::Http1Only, reqwest::Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_50_mib_upload_and_download_stream_intact() {
    streams_through_with_flat_memory(HttpVersion::Http2, reqwest::Version::HTTP_2).await;
}
