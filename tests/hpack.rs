//! HTTP/2 header compression of the values that change with every response (`X-Request-Id`,
//! `RateLimit-Remaining`, `RateLimit-Reset`): sent as never-indexed literals, so they never
//! push the repeating headers out of the connection's HPACK table, but with their *names* as
//! table indexes. The first response of a connection sends them indexed to put the names in the
//! table. Read off the wire with a raw HTTP/2 client over TLS: the HPACK representations of each
//! response's header block are walked (RFC 7541 §6) without decoding any string.

mod common;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use common::{tls_connect, Certs, ConfigBuilder, FakeFrappe, Gateway, PUBLIC_ROUTE};

use common::h2_raw::{frame, ACK, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS};

/// `GET /__test/echo` for `authority`, every field a literal without indexing (no Huffman).
fn request_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    for (index, value) in [(1u8, authority), (4, "/__test/echo")] {
        block.push(index); // 0000xxxx: literal without indexing, indexed name
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("frame head");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.expect("frame payload");
    (head[3], head[4], id, payload)
}

/// An HPACK integer with an `n`-bit prefix at `block[*at]`.
fn integer(block: &[u8], at: &mut usize, n: u32) -> usize {
    let mask = (1usize << n) - 1;
    let mut value = usize::from(block[*at]) & mask;
    *at += 1;
    if value == mask {
        let mut shift = 0;
        loop {
            let byte = block[*at];
            *at += 1;
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

fn skip_string(block: &[u8], at: &mut usize) {
    let len = integer(block, at, 7);
    *at += len;
}

/// How a header block sends never-indexed fields: (with the name as an index, with the name
/// spelled out).
fn never_indexed(block: &[u8]) -> (usize, usize) {
    let (mut by_index, mut spelled) = (0, 0);
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 {
            integer(block, &mut at, 7); // indexed field
        } else if first & 0x40 != 0 {
            if integer(block, &mut at, 6) == 0 {
                skip_string(block, &mut at);
            }
            skip_string(block, &mut at);
        } else if first & 0x20 != 0 {
            integer(block, &mut at, 5); // table size update
        } else {
            let never = first & 0x10 != 0;
            let name_index = integer(block, &mut at, 4);
            if name_index == 0 {
                skip_string(block, &mut at);
            }
            skip_string(block, &mut at);
            match (never, name_index) {
                (true, 0) => spelled += 1,
                (true, _) => by_index += 1,
                _ => {}
            }
        }
    }
    (by_index, spelled)
}

#[tokio::test]
async fn per_response_values_are_never_indexed_and_their_names_are_table_indexes() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        // Slow enough that no bucket refills between requests: every response's remaining count
        // and reset differ from the last one's (an equal value would be sent as a table index).
        .set("rate_limit", "per_ip = \"100/hour\"")
        .extra(PUBLIC_ROUTE)
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(PREFACE).await.unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let authority = format!("localhost:{}", gateway.proxy_addr().port());

    let mut blocks = Vec::new();
    for stream in [1u32, 3, 5, 7] {
        let request = frame(HEADERS, END_STREAM | END_HEADERS, stream, &request_block(&authority));
        tls.write_all(&request).await.unwrap();
        let block = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (kind, flags, id, payload) = read_frame(&mut tls).await;
                if kind == SETTINGS && flags & ACK == 0 {
                    tls.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                if kind == HEADERS && id == stream {
                    assert_ne!(flags & END_HEADERS, 0, "one HEADERS frame, no CONTINUATION");
                    break payload;
                }
            }
        })
        .await
        .expect("a response head");
        blocks.push(block);
    }
    // The first response indexes the three values (their names enter the table) ...
    assert_eq!(never_indexed(&blocks[0]), (0, 0), "first response: {:02x?}", blocks[0]);
    // ... then every response sends them never-indexed, naming each by its table index.
    for (i, block) in blocks.iter().enumerate().skip(1) {
        assert_eq!(never_indexed(block), (3, 0), "response {}: {block:02x?}", i + 1);
    }
}
