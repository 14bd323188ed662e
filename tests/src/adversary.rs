//! A man in the middle for the key proxy protocol: a real gRPC server that
//! other gateways are told to dial instead of one org's gateway (`ehr up
//! --advertise ORG=URL`). It forwards to the real gateway and records
//! everything that passes, or misbehaves on command: answers "unavailable",
//! hangs, delays, or corrupts the capsule fragment it returns. It stands for
//! a proxy that is down, slow or malicious — and is the wiretap that shows
//! what a proxy org receives and sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use ehr_proto::ehr::proxy::v1::key_proxy_client::KeyProxyClient;
use ehr_proto::ehr::proxy::v1::key_proxy_server::{KeyProxy, KeyProxyServer};
use ehr_proto::ehr::proxy::v1::{CfragResponse, DeliverKfragResponse, SignedRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// What the adversary does with the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass through.
    Forward,
    /// Pass through after a delay.
    Slow(Duration),
    /// Answer UNAVAILABLE at once (a proxy that is down).
    Down,
    /// Never answer (a proxy that hangs).
    Hang,
    /// Pass through, but corrupt the returned cfrag (a malicious proxy).
    Corrupt,
}

/// One call that passed, with what the real gateway answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: &'static str,
    pub request: SignedRequest,
    /// The answer's bytes (cfrag, or the delivery receipt's fields).
    pub response: Option<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    mode: Option<Mode>,
    target: Option<Channel>,
    seen: Vec<Seen>,
}

/// A running adversary.
#[derive(Clone)]
pub struct Adversary {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Adversary {
    /// Binds 127.0.0.1:0 and serves (forwarding once [`Adversary::target`] is set).
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let adv = Self {
            url,
            inner: Arc::new(Mutex::new(Inner::default())),
        };
        let svc = KeyProxyServer::new(adv.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(adv)
    }

    /// Where to forward (the real gateway's URL).
    pub fn target(&self, url: &str) -> Result<()> {
        let ch = Endpoint::from_shared(url.to_owned())?.connect_lazy();
        self.lock().target = Some(ch);
        Ok(())
    }

    /// Sets the behaviour.
    pub fn set(&self, mode: Mode) {
        self.lock().mode = Some(mode);
    }

    /// Everything forwarded so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn before(&self) -> Result<(Mode, KeyProxyClient<Channel>), Status> {
        let (mode, target) = {
            let g = self.lock();
            (g.mode.unwrap_or(Mode::Forward), g.target.clone())
        };
        match mode {
            Mode::Down => return Err(Status::unavailable("adversary: proxy down")),
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Forward | Mode::Corrupt => {}
        }
        let ch = target.ok_or_else(|| Status::unavailable("adversary: no target yet"))?;
        Ok((mode, KeyProxyClient::new(ch)))
    }

    fn record(&self, method: &'static str, request: SignedRequest, response: Option<Vec<u8>>) {
        self.lock().seen.push(Seen {
            method,
            request,
            response,
        });
    }

    async fn cfrag_call(
        &self,
        method: &'static str,
        req: SignedRequest,
    ) -> Result<Response<CfragResponse>, Status> {
        let (mode, mut client) = self.before().await?;
        let r = match method {
            "Release" => client.release(req.clone()).await,
            _ => client.reencrypt(req.clone()).await,
        };
        let mut r = match r {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.record(method, req, None);
                return Err(s);
            }
        };
        self.record(method, req, Some(r.cfrag.clone()));
        if mode == Mode::Corrupt {
            r.cfrag = corrupt_cfrag(&r.cfrag);
        }
        Ok(Response::new(r))
    }
}

/// Changes one hex digit of the cfrag's `signature` field (a scalar: the
/// cfrag still decodes but no longer verifies); falls back to flipping the
/// last hex digit anywhere.
pub fn corrupt_cfrag(cfrag: &[u8]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(cfrag).into_owned();
    let flip = |c: char| if c == '0' { '1' } else { '0' };
    let pos = text
        .find("\"signature\"")
        .and_then(|p| text[p..].find("0x").map(|q| p + q + 10))
        .or_else(|| text.rfind(|c: char| c.is_ascii_hexdigit()));
    if let Some(p) = pos
        && let Some(c) = text[p..].chars().next()
        && c.is_ascii_hexdigit()
    {
        text.replace_range(p..p + 1, &flip(c).to_string());
    }
    text.into_bytes()
}

#[tonic::async_trait]
impl KeyProxy for Adversary {
    async fn deliver_kfrag(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<DeliverKfragResponse>, Status> {
        let req = request.into_inner();
        let (_, mut client) = self.before().await?;
        match client.deliver_kfrag(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                self.record(
                    "DeliverKfrag",
                    req,
                    Some(format!("{}/{}", r.consent_id, r.org).into_bytes()),
                );
                Ok(Response::new(r))
            }
            Err(s) => {
                self.record("DeliverKfrag", req, None);
                Err(s)
            }
        }
    }

    async fn reencrypt(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<CfragResponse>, Status> {
        self.cfrag_call("Reencrypt", request.into_inner()).await
    }

    async fn release(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<CfragResponse>, Status> {
        self.cfrag_call("Release", request.into_inner()).await
    }
}
