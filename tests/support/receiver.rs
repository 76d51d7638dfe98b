//! An HTTP/1.1 endpoint on loopback for Notifications: records every request (headers and
//! body) and answers as told (200, an error status, or never).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A token in the endpoint's URL (a URL is a credential: it must not leak).
pub const URL_TOKEN: &str = "URLTOKEN-b83f";

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Fail(u16),
    /// Reads the request and never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub content_type: String,
    pub key: String,
    pub body: Value,
    pub raw: String,
}

impl Received {
    /// The event's type: the CloudEvent's `data.event`, or the Slack text's `[Type]`.
    pub fn kind(&self) -> String {
        match self.body["data"]["event"].as_str() {
            Some(kind) => kind.to_string(),
            None => self.body["text"]
                .as_str()
                .and_then(|t| t.strip_prefix('['))
                .and_then(|t| t.split(']').next())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// An HTTP/1.1 endpoint on loopback that records every request.
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/{URL_TOKEN}",
            listener.local_addr().unwrap()
        );
        let got = Arc::new(Mutex::new(vec![]));
        let answer = Arc::new(Mutex::new(Answer::Ok));
        let (g, a) = (got.clone(), answer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, g.clone(), a.clone()));
            }
        });
        Receiver { url, got, answer }
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived; returns them.
    pub async fn until(&self, n: usize, timeout: Duration) -> Vec<Received> {
        super::eventually(
            timeout,
            &format!("{n} request(s) at the receiver"),
            || async {
                let got = self.got();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

/// Reads one request (head, then `Content-Length` bytes of body), records it, answers.
async fn serve(
    mut stream: tokio::net::TcpStream,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
) {
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let raw = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    got.lock().unwrap().push(Received {
        content_type: header("content-type"),
        key: header("idempotency-key"),
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw: format!("{head}{raw}"),
    });
    let status = match *answer.lock().unwrap() {
        Answer::Ok => 200,
        Answer::Fail(code) => code,
        Answer::Hang => 0,
    };
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}
