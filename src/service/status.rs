//! The one mapping from [`Error`] to gRPC [`Status`]. No catch-all arm: a new error variant
//! does not compile until it is given its code.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::Error;

/// google.rpc.ErrorInfo domain of this service.
pub const ERROR_DOMAIN: &str = "customer_profile.v1";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::InvalidArgument(violations) => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                ),
            ),
            Error::NotFound(_) => Status::not_found(message),
            Error::Erased(_) => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_error_info("ERASED", ERROR_DOMAIN, HashMap::new()),
            ),
            Error::Aborted(_) => Status::aborted(message),
            Error::FailedPrecondition { reason, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            ),
            Error::OutOfRange(_) => Status::out_of_range(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Unavailable(_) => {
                tracing::error!(error = %message, "storage unavailable");
                Status::unavailable(message)
            }
            Error::Corrupt(_) => {
                tracing::error!(error = %message, "corrupt data detected");
                Status::data_loss(message)
            }
        }
    }
}
