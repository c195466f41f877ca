//! Real clients for the services' tests: HTTP/1.1 through hyper (with a Server-Sent Events
//! reader) and the generated gRPC client.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Http {
    /// A client of the server at `addr` (`host:port`), sending `token` when given.
    pub fn new(addr: impl std::fmt::Display, token: Option<&str>) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            token: token.map(str::to_owned),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> hyper::Response<Incoming> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("a response within 30 s")
            .expect("the request went through")
    }

    /// Sends a request; returns the status and the body as JSON (or a JSON string of the
    /// text when it is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: impl Into<Bytes>) -> (u16, Value) {
        let res = self.send(method, path, body, &[]).await;
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    /// Appends one entry; its offset.
    pub async fn append(&self, topic: &str, data: impl Into<Bytes>) -> u64 {
        let (s, v) = self.call("POST", &format!("/topics/{topic}"), data).await;
        assert_eq!(s, 200, "{v}");
        v["offset"].as_u64().unwrap()
    }

    /// Opens `GET path` as an event stream (sending `Last-Event-ID` when given).
    pub async fn events(&self, path: &str, last_id: Option<u64>) -> Result<Sse, (u16, Value)> {
        let id = last_id.map(|n| n.to_string());
        let headers: Vec<(&str, &str)> = id.iter().map(|v| ("last-event-id", v.as_str())).collect();
        let res = self.send("GET", path, Bytes::new(), &headers).await;
        let status = res.status().as_u16();
        if status != 200 {
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            return Err((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ));
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            body: res.into_body(),
            text: String::new(),
        })
    }
}

/// A Server-Sent Events response being read.
pub struct Sse {
    body: Incoming,
    text: String,
}

impl Sse {
    /// The next event of any kind: (event name, id, data as JSON); `None` once the server
    /// ended the stream. 30 s at most.
    pub async fn next_any(&mut self) -> Option<(String, Option<u64>, Value)> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                while let Some(end) = self.text.find("\n\n") {
                    let event: String = self.text.drain(..end + 2).collect();
                    let Some(name) = event.lines().find_map(|l| l.strip_prefix("event: ")) else {
                        continue; // a keep-alive comment
                    };
                    let id = event
                        .lines()
                        .find_map(|l| l.strip_prefix("id: "))
                        .map(|i| i.parse().unwrap());
                    let data = event
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    return Some((name.to_owned(), id, serde_json::from_str(data).unwrap()));
                }
                let frame = self.body.frame().await?.expect("the stream reads");
                if let Ok(data) = frame.into_data() {
                    self.text.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
        })
        .await
        .expect("an event (or the end) within 30 s")
    }

    /// The next `entry` event: (id, data as JSON); `None` once the server ended the stream.
    /// Keep-alive comments are skipped. 30 s at most.
    pub async fn next(&mut self) -> Option<(u64, Value)> {
        tokio::time::timeout(Duration::from_secs(30), self.next_inner())
            .await
            .expect("an event (or the end) within 30 s")
    }

    async fn next_inner(&mut self) -> Option<(u64, Value)> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                if !event.lines().any(|l| l == "event: entry") {
                    continue;
                }
                let id = event.lines().find_map(|l| l.strip_prefix("id: "))?;
                let data = event.lines().find_map(|l| l.strip_prefix("data: "))?;
                return Some((id.parse().unwrap(), serde_json::from_str(data).unwrap()));
            }
            let frame = self.body.frame().await?.expect("the stream reads");
            if let Ok(data) = frame.into_data() {
                self.text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

/// A gRPC client of the server at `addr`, sending `token` when given.
#[cfg(feature = "grpc")]
pub async fn grpc(
    addr: impl std::fmt::Display,
    token: Option<&str>,
) -> walrus_async::grpc::WalClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    walrus_async::grpc::WalClient::with_interceptor(channel, Bearer(token.map(str::to_owned)))
}

/// Adds `authorization: Bearer …` to each call.
#[derive(Clone)]
pub struct Bearer(Option<String>);

#[cfg(feature = "grpc")]
impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(r)
    }
}
