//! `frappe-gateway health`: asks a running gateway's admin listener for `/healthz`, for
//! container healthchecks in an image that has no curl. Plain HTTP/1.1 over std sockets: no
//! runtime, no TLS (the admin listener serves plain HTTP).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// The admin listener's `/healthz` URL for a configured `admin.listen`: an unspecified
/// address (`0.0.0.0`, `[::]`) is asked on loopback.
pub fn default_url(admin: SocketAddr) -> String {
    let ip = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("http://{ip}:{}/healthz", admin.port())
}

/// GETs `url` (`http://host:port/path`) and returns the status line when the status is 200;
/// anything else — refused, timed out, another status — is an error saying what happened.
pub fn probe(url: &str, timeout: Duration) -> Result<String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{url}: {authority} has no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("{url}: cannot connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: frappe-gateway-health\r\n\r\n");
    stream.write_all(request.as_bytes()).with_context(|| format!("{url}: cannot send the request"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).with_context(|| format!("{url}: no answer"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default().trim().to_string();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(status_line),
        Some(_) => bail!("{url}: {status_line}"),
        None => bail!("{url}: not an HTTP answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_uses_loopback_for_wildcards() {
        assert_eq!(default_url("0.0.0.0:9901".parse().unwrap()), "http://127.0.0.1:9901/healthz");
        assert_eq!(default_url("[::]:9901".parse().unwrap()), "http://[::1]:9901/healthz");
        assert_eq!(default_url("10.1.2.3:9901".parse().unwrap()), "http://10.1.2.3:9901/healthz");
    }

    #[test]
    fn probe_reads_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in
                ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "HTTP/1.1 503 Service Unavailable\r\n\r\n"]
            {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let url = format!("http://{addr}/healthz");
        assert_eq!(probe(&url, Duration::from_secs(5)).unwrap(), "HTTP/1.1 200 OK");
        let e = probe(&url, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("503"), "{e}");
        server.join().unwrap();
        assert!(probe("https://x/", Duration::from_secs(1)).is_err());
    }
}
