//! `flagd.evaluation.v1.Service` and `v2` (v1 with optional values, what
//! flagd's current RPC providers call): Resolve* and EventStream.

use super::*;
use meridian_proto::flagd::evaluation::v1 as ev;
use meridian_proto::flagd::evaluation::v2 as ev2;

#[tonic::async_trait]
impl ev::service_server::Service for FlagdApi {
    async fn resolve_boolean(
        &self,
        r: Request<ev::ResolveBooleanRequest>,
    ) -> Result<Response<ev::ResolveBooleanResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Bool).await?;
        Ok(Response::new(ev::ResolveBooleanResponse {
            value: x.value.and_then(|v| v.as_bool()).unwrap_or_default(),
            reason: x.reason,
            variant: x.variant,
            metadata: x.metadata,
        }))
    }

    async fn resolve_string(
        &self,
        r: Request<ev::ResolveStringRequest>,
    ) -> Result<Response<ev::ResolveStringResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::String).await?;
        Ok(Response::new(ev::ResolveStringResponse {
            value: x
                .value
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            reason: x.reason,
            variant: x.variant,
            metadata: x.metadata,
        }))
    }

    async fn resolve_float(
        &self,
        r: Request<ev::ResolveFloatRequest>,
    ) -> Result<Response<ev::ResolveFloatResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Float).await?;
        Ok(Response::new(ev::ResolveFloatResponse {
            value: x.value.and_then(|v| v.as_f64()).unwrap_or_default(),
            reason: x.reason,
            variant: x.variant,
            metadata: x.metadata,
        }))
    }

    async fn resolve_int(
        &self,
        r: Request<ev::ResolveIntRequest>,
    ) -> Result<Response<ev::ResolveIntResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Int).await?;
        Ok(Response::new(ev::ResolveIntResponse {
            value: x.value.and_then(|v| v.as_i64()).unwrap_or_default(),
            reason: x.reason,
            variant: x.variant,
            metadata: x.metadata,
        }))
    }

    async fn resolve_object(
        &self,
        r: Request<ev::ResolveObjectRequest>,
    ) -> Result<Response<ev::ResolveObjectResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Object).await?;
        Ok(Response::new(ev::ResolveObjectResponse {
            value: x
                .value
                .as_ref()
                .and_then(Value::as_object)
                .map(map_to_struct),
            reason: x.reason,
            variant: x.variant,
            metadata: x.metadata,
        }))
    }

    async fn resolve_all(
        &self,
        r: Request<ev::ResolveAllRequest>,
    ) -> Result<Response<ev::ResolveAllResponse>, Status> {
        let (ns, c) = self.compiled(&r, "").await?;
        let ctx = context(r.into_inner().context)?;
        let now = now_s();
        let mut flags = std::collections::HashMap::new();
        for key in c.evaluator.keys() {
            let res = c.evaluator.evaluate(key, &ctx, now, Expect::Any);
            // flagd leaves out what fails and what has no value.
            let (None, Some(v)) = (&res.error, res.value) else {
                continue;
            };
            use ev::any_flag::Value as V;
            let value = match v {
                Value::Bool(b) => V::BoolValue(*b),
                Value::String(s) => V::StringValue(s.clone()),
                Value::Number(n) => V::DoubleValue(n.as_f64().unwrap_or_default()),
                Value::Object(o) => V::ObjectValue(map_to_struct(o)),
                _ => continue,
            };
            flags.insert(
                key.to_string(),
                ev::AnyFlag {
                    reason: res.reason.as_str().to_string(),
                    variant: res.variant.unwrap_or_default().to_string(),
                    value: Some(value),
                    metadata: metadata(&res),
                },
            );
        }
        let m = serde_json::json!({"flagSetId": ns});
        Ok(Response::new(ev::ResolveAllResponse {
            flags,
            metadata: m.as_object().map(map_to_struct),
        }))
    }

    type EventStreamStream = Stream_<ev::EventStreamResponse>;

    async fn event_stream(
        &self,
        r: Request<ev::EventStreamRequest>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        use futures::StreamExt;
        let s = self.events(&r).await?;
        Ok(Response::new(Box::pin(s.map(|e| {
            e.map(|(r#type, data)| ev::EventStreamResponse { r#type, data })
        }))))
    }
}

#[tonic::async_trait]
impl ev2::service_server::Service for FlagdApi {
    async fn resolve_boolean(
        &self,
        r: Request<ev2::ResolveBooleanRequest>,
    ) -> Result<Response<ev2::ResolveBooleanResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Bool).await?;
        Ok(Response::new(ev2::ResolveBooleanResponse {
            value: x.value.as_ref().and_then(Value::as_bool),
            variant: x.variant_opt(),
            reason: x.reason,
            metadata: x.metadata,
        }))
    }

    async fn resolve_string(
        &self,
        r: Request<ev2::ResolveStringRequest>,
    ) -> Result<Response<ev2::ResolveStringResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::String).await?;
        Ok(Response::new(ev2::ResolveStringResponse {
            value: x
                .value
                .as_ref()
                .and_then(|v| v.as_str().map(str::to_string)),
            variant: x.variant_opt(),
            reason: x.reason,
            metadata: x.metadata,
        }))
    }

    async fn resolve_float(
        &self,
        r: Request<ev2::ResolveFloatRequest>,
    ) -> Result<Response<ev2::ResolveFloatResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Float).await?;
        Ok(Response::new(ev2::ResolveFloatResponse {
            value: x.value.as_ref().and_then(Value::as_f64),
            variant: x.variant_opt(),
            reason: x.reason,
            metadata: x.metadata,
        }))
    }

    async fn resolve_int(
        &self,
        r: Request<ev2::ResolveIntRequest>,
    ) -> Result<Response<ev2::ResolveIntResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Int).await?;
        Ok(Response::new(ev2::ResolveIntResponse {
            value: x.value.as_ref().and_then(Value::as_i64),
            variant: x.variant_opt(),
            reason: x.reason,
            metadata: x.metadata,
        }))
    }

    async fn resolve_object(
        &self,
        r: Request<ev2::ResolveObjectRequest>,
    ) -> Result<Response<ev2::ResolveObjectResponse>, Status> {
        let (key, ctx) = (r.get_ref().flag_key.clone(), r.get_ref().context.clone());
        let x = self.resolve(&r, &key, ctx, Expect::Object).await?;
        Ok(Response::new(ev2::ResolveObjectResponse {
            value: x
                .value
                .as_ref()
                .and_then(Value::as_object)
                .map(map_to_struct),
            variant: x.variant_opt(),
            reason: x.reason,
            metadata: x.metadata,
        }))
    }

    type EventStreamStream = Stream_<ev2::EventStreamResponse>;

    async fn event_stream(
        &self,
        r: Request<ev2::EventStreamRequest>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        use futures::StreamExt;
        let s = self.events(&r).await?;
        Ok(Response::new(Box::pin(s.map(|e| {
            e.map(|(r#type, data)| ev2::EventStreamResponse { r#type, data })
        }))))
    }
}
