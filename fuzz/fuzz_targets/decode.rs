//! Fuzz target for the cohmem wire-format decoder (issue 5, item 6: fuzzing).
//!
//! Feeds arbitrary bytes to `Request::decode` and `Reply::decode`. Neither
//! may panic, and whatever decodes must survive an encode/decode round trip
//! unchanged:
//!
//! * a request re-encodes to exactly the input bytes (requests have no
//!   ignored fields: every bit of a valid request frame is meaningful);
//! * a reply re-encodes to a frame of the same length (every message has an
//!   exact size) that decodes to the same value and re-encodes to itself
//!   (replies have reserved bits that the decoder ignores, so the bytes may
//!   differ from the input there);
//! * the request id is the one `peek_request_id` reads, and no encoded frame
//!   exceeds `MAX_FRAME`.
//!
//! Run: `cargo fuzz run decode` from the workspace root (see fuzz/README.md).

#![no_main]

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{peek_request_id, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((id, req)) = Request::decode(data) {
        assert_eq!(id, peek_request_id(data), "request id differs from the header's");
        let (min_fds, max_fds) = req.fd_count();
        assert!(min_fds <= max_fds && max_fds <= cohmem_proto::limits::MAX_FDS);
        let again = req.encode(id);
        assert_eq!(again, data, "{req:?} re-encodes to other bytes");
        let (id2, req2) = Request::decode(&again).expect("a re-encoded request decodes");
        assert_eq!((id2, &req2), (id, &req), "request round trip");
    }
    if let Ok((id, reply)) = Reply::decode(data) {
        assert_eq!(id, peek_request_id(data), "reply id differs from the header's");
        let again = reply.encode(id);
        assert!(again.len() <= MAX_FRAME, "{} byte reply frame", again.len());
        assert_eq!(again.len(), data.len(), "{reply:?} re-encodes to another length");
        let (id2, reply2) = Reply::decode(&again).expect("a re-encoded reply decodes");
        assert_eq!((id2, &reply2), (id, &reply), "reply round trip");
        assert_eq!(reply2.encode(id2), again, "reply encoding is not a fixed point");
    }
});
