//! Requests by method and outcome, with latency histograms, for `/metrics`
//! (names after go-grpc-prometheus and OpenTelemetry's HTTP conventions):
//!
//! - gRPC: `meridian_grpc_server_handled_total{grpc_service, grpc_method,
//!   grpc_code}` and `meridian_grpc_server_handling_seconds{grpc_service,
//!   grpc_method}`, recorded when the response ends. The code comes from the
//!   response's headers (errors answered at once) or its trailers (the end
//!   of every other call); a response dropped before its end (the client
//!   went away) counts as `Cancelled`. A stream's time is its whole life.
//! - HTTP: `meridian_http_server_requests_total{method, route, code}` and
//!   `meridian_http_server_request_duration_seconds{method, route}`, where
//!   `route` is the route's template (`/v1/config/{project}/{env}`), never
//!   the path a caller sent, so the label set stays bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, seconds: 250 µs to 10 s.
const BUCKETS_S: [f64; 14] = [
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcCodeLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpCodeLabels {
    method: String,
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS_S)
}

/// The families, shared by the gRPC layer and the HTTP middleware.
pub struct RequestMetrics {
    grpc_handled: Family<GrpcCodeLabels, Counter>,
    grpc_seconds: Family<GrpcLabels, Histogram, fn() -> Histogram>,
    http_requests: Family<HttpCodeLabels, Counter>,
    http_seconds: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

impl RequestMetrics {
    /// New families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<RequestMetrics> {
        let m = RequestMetrics {
            grpc_handled: Family::default(),
            grpc_seconds: Family::new_with_constructor(histogram),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(histogram),
        };
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code",
            m.grpc_handled.clone(),
        );
        // Histograms carry their unit in the name only: OpenMetrics parsers
        // differ on a UNIT line for them (openmetrics-parser refuses it).
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call duration in seconds, from the request to the end of the response (a stream's whole life)",
            m.grpc_seconds.clone(),
        );
        registry.register(
            "http_server_requests",
            "HTTP requests completed, by method, route template and status code",
            m.http_requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "HTTP request duration in seconds, until the response's headers",
            m.http_seconds.clone(),
        );
        Arc::new(m)
    }

    fn grpc_done(&self, path: &str, code: tonic::Code, secs: f64) {
        // "/package.Service/Method"
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        self.grpc_handled
            .get_or_create(&GrpcCodeLabels {
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
                grpc_code: format!("{code:?}"),
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&GrpcLabels {
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
            })
            .observe(secs);
    }

    /// Records one HTTP request.
    pub fn http_done(&self, method: &str, route: &str, code: u16, secs: f64) {
        self.http_requests
            .get_or_create(&HttpCodeLabels {
                method: method.to_string(),
                route: route.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.http_seconds
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(secs);
    }
}

/// The gRPC server's layer (`tonic::transport::Server::layer`).
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<RequestMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResB: Body + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let code = grpc_code(&parts.headers);
            Ok(http::Response::from_parts(
                parts,
                MeteredBody {
                    inner: body,
                    pending: Some(Pending {
                        path,
                        start,
                        code,
                        metrics,
                    }),
                },
            ))
        })
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(v))
}

/// What a response still has to record when it ends.
struct Pending {
    path: String,
    start: Instant,
    code: Option<tonic::Code>,
    metrics: Arc<RequestMetrics>,
}

impl Pending {
    fn record(self, code: tonic::Code) {
        let secs = self.start.elapsed().as_secs_f64();
        self.metrics
            .grpc_done(&self.path, self.code.unwrap_or(code), secs);
    }
}

/// A response body that records its call when it ends (or is dropped).
pub struct MeteredBody<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let code = grpc_code(t).unwrap_or(tonic::Code::Unknown);
                    if let Some(p) = this.pending.take() {
                        p.record(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = this.pending.take() {
                    p.record(tonic::Code::Internal);
                }
            }
            // Ended without trailers: the status came in the headers.
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.record(tonic::Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server shut down).
        if let Some(p) = self.pending.take() {
            p.record(tonic::Code::Cancelled);
        }
    }
}

/// The HTTP router's middleware (`axum::middleware::from_fn_with_state`).
pub async fn http_layer(
    axum::extract::State(metrics): axum::extract::State<Arc<RequestMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics.http_done(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}
