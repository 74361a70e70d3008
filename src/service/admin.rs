//! AdminService: online backup.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::pb::{self, admin_service_server::AdminService};
use crate::error::Error;
use crate::store::SledStore;

/// AdminService over the sled store.
pub struct AdminApi(pub Arc<SledStore>);

type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let store = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::BackupResponse, Status>>(8);
        tokio::task::spawn_blocking(move || {
            let result = store.backup(&mut |bytes| {
                tx.blocking_send(Ok(pb::BackupResponse {
                    data: bytes.to_vec(),
                }))
                .map_err(|_| Error::Unavailable("the backup client went away".into()))
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(Status::from(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
