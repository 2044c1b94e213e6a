//! `flagd.sync.v1.FlagSyncService`: in-process providers download an
//! environment's flags as flagd JSON and are pushed every change.

use super::*;
use meridian_proto::flagd::sync::v1 as sync;

#[tonic::async_trait]
impl sync::flag_sync_service_server::FlagSyncService for FlagdApi {
    type SyncFlagsStream = Stream_<sync::SyncFlagsResponse>;

    async fn sync_flags(
        &self,
        r: Request<sync::SyncFlagsRequest>,
    ) -> Result<Response<Self::SyncFlagsStream>, Status> {
        let access = self.access(&r)?;
        // Older providers send the selector in this deprecated field.
        #[allow(deprecated)]
        let ns = selector(&r, &r.get_ref().selector)?;
        let watch = self
            .store
            .watch_flags(&ns, &access)
            .await
            .map_err(|e| e.to_status())?;
        // The stream pulls from the watch: no task per stream.
        let s = futures::stream::unfold(watch, |mut w| async move {
            let item = w
                .next()
                .await?
                .map_err(|e: CfgError| e.to_status())
                .map(|c| {
                    // The environment's revision, for clients that keep a
                    // copy (a key no evaluation context uses).
                    let mut m = Map::new();
                    m.insert("meridianRevision".into(), Value::from(c.revision()));
                    sync::SyncFlagsResponse {
                        flag_configuration: c.flagd_json.clone(),
                        sync_context: Some(map_to_struct(&m)),
                    }
                });
            Some((item, w))
        });
        let s: Stream_<sync::SyncFlagsResponse> = Box::pin(s);
        Ok(Response::new(s))
    }

    async fn fetch_all_flags(
        &self,
        r: Request<sync::FetchAllFlagsRequest>,
    ) -> Result<Response<sync::FetchAllFlagsResponse>, Status> {
        #[allow(deprecated)]
        let field = r.get_ref().selector.clone();
        let (_, c) = self.compiled(&r, &field).await?;
        Ok(Response::new(sync::FetchAllFlagsResponse {
            flag_configuration: c.flagd_json.clone(),
        }))
    }

    /// flagd's deprecated sync metadata. In-process providers ask for it
    /// before every sync without a selector: then it says nothing but that
    /// the caller may ask.
    async fn get_metadata(
        &self,
        r: Request<sync::GetMetadataRequest>,
    ) -> Result<Response<sync::GetMetadataResponse>, Status> {
        let access = self.access(&r)?;
        let mut m = Map::new();
        if let Ok(ns) = selector(&r, "") {
            let c = self
                .store
                .compiled_flags(&ns, &access)
                .await
                .map_err(|e| e.to_status())?;
            m.insert("flagSetId".into(), Value::String(ns));
            m.insert("revision".into(), Value::from(c.revision()));
        }
        Ok(Response::new(sync::GetMetadataResponse {
            metadata: Some(map_to_struct(&m)),
        }))
    }
}
