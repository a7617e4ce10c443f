//! The 8-byte handshake, both sides, both services, followed (on the server side) by the
//! request frames a client may pipeline after its hello.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::{REQUEST_LIMIT, Scripted};
use shoal_proto::ProtoError;
use shoal_proto::codec::{self, MAGIC, Service, VERSION};
use shoal_proto::message::{IndexRequest, PeerRequest};

fn hello(service: Service, last: u8) -> [u8; 8] {
    let v = VERSION.to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        v[0],
        v[1],
        service as u8,
        last,
    ]
}

fuzz_target!(|data: &[u8]| {
    for service in [Service::Index, Service::Peer] {
        // Server side: reads exactly the 8-byte hello, answers at most 8 bytes.
        let mut s = Scripted::new(data, usize::MAX);
        let result = codec::server_handshake(&mut s, service);
        assert!(s.consumed() <= 8, "server read past the hello");
        match &result {
            Ok(()) => {
                assert_eq!(
                    &data[..7],
                    &hello(service, 0)[..7],
                    "accepted a foreign hello"
                );
                assert_eq!(s.output, hello(service, 0));
            }
            Err(ProtoError::BadMagic(_)) | Err(ProtoError::Closed) => {
                assert!(s.output.is_empty(), "answered a non-shoal client")
            }
            Err(ProtoError::VersionMismatch { .. }) => assert_eq!(s.output, hello(service, 1)),
            Err(ProtoError::WrongProtocol { .. }) => assert_eq!(s.output, hello(service, 2)),
            Err(e) => panic!("unexpected server handshake error {e:?}"),
        }
        // Whatever follows an accepted hello is request frames.
        if result.is_ok() {
            let rest = &data[8..];
            match service {
                Service::Index => shoal_fuzz::frames::<IndexRequest>(rest, REQUEST_LIMIT),
                Service::Peer => shoal_fuzz::frames::<PeerRequest>(rest, REQUEST_LIMIT),
            }
        }

        // Client side: `data` is the server's answer.
        let mut c = Scripted::new(data, 1);
        let result = codec::client_handshake(&mut c, service);
        assert_eq!(
            c.output,
            hello(service, 0),
            "client sent something else than its hello"
        );
        assert!(c.consumed() <= 8, "client read past the answer");
        if result.is_ok() {
            assert_eq!(&data[..4], &MAGIC);
            assert_eq!(data[6], service as u8);
            assert_eq!(data[7], 0);
        }
        // Hello + pipelined first request: the same verdict.
        let mut frame = Vec::new();
        codec::encode_frame(
            &IndexRequest::Renew {
                holder: "h:1".parse().unwrap(),
            },
            &mut frame,
        )
        .unwrap();
        let mut c2 = Scripted::new(data, usize::MAX);
        let result2 = codec::client_handshake_with_frame(&mut c2, service, &frame);
        assert_eq!(result.is_ok(), result2.is_ok());
        assert_eq!(&c2.output[..8], &hello(service, 0));
        assert_eq!(&c2.output[8..], &frame[..]);
    }
});
