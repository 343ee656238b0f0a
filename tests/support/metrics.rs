//! Scraping a daemon's Prometheus page from inside its namespace (`[settings] metrics`
//! listens there), and reading samples off it.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use symroute::lab::{in_netns, Netns};

/// `GET path` from the server at `addr` inside `ns`: (status line, body).
pub fn get(ns: &Netns, addr: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    let addr = addr.to_string();
    let text = in_netns(ns.name(), move || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text)?;
        Ok(text)
    })
    .expect("in netns")
    .expect("scrape");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `GET /metrics`, which must answer 200: the page.
pub fn scrape(ns: &Netns, addr: &str) -> String {
    let (status, body) = get(ns, addr, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    body
}

/// The value of the sample `series` (name and labels as written), if present.
pub fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

pub fn must(page: &str, series: &str) -> f64 {
    value(page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"))
}
