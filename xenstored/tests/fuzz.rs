//! Property tests (fuzzing) of everything that parses client bytes: the
//! message decoder, the guest ring, and the request handler fed arbitrary
//! messages from a guest. None may panic; every reply stays in bounds.

use proptest::prelude::*;
use xenstore::core::Xenstored;
use xenstore::perms::Caller;
use xenstore::quota::Quota;
use xenstore::ring::{GuestField, Ring, RING_SIZE};
use xenstore::wire::{ty, Decoder, Header, Message, HEADER_LEN, PAYLOAD_MAX};

fn message() -> impl Strategy<Value = Message> {
    let types = prop_oneof![0u32..=27, Just(0xffff), any::<u32>()];
    let path = prop_oneof![
        Just(b"data/x".to_vec()),
        Just(b"/local/domain/1/data".to_vec()),
        Just(b"/".to_vec()),
        Just(b"@releaseDomain".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let tail = proptest::collection::vec(any::<u8>(), 0..64);
    (types, 0u32..4, path, tail, any::<bool>()).prop_map(|(t, tx, p, rest, nul)| {
        let mut payload = p;
        if nul {
            payload.push(0);
        }
        payload.extend(rest);
        Message::new(t, 7, tx, payload)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..9000), cut in 1usize..700) {
        let mut d = Decoder::default();
        let mut consumed = 0;
        for chunk in bytes.chunks(cut) {
            d.push(chunk);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => {
                        let enc = m.encode();
                        prop_assert!(m.payload.len() <= PAYLOAD_MAX);
                        prop_assert_eq!(&bytes[consumed..consumed + enc.len()], &enc[..]);
                        consumed += enc.len();
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Only a header announcing too much breaks the stream.
                        let mut h = [0u8; HEADER_LEN];
                        h.copy_from_slice(&bytes[consumed..consumed + HEADER_LEN]);
                        prop_assert!(Header::parse(&h).len as usize > PAYLOAD_MAX);
                        return Ok(());
                    }
                }
            }
        }
        prop_assert_eq!(consumed + d.pending(), bytes.len());
    }

    #[test]
    fn ring_reads_stay_in_bounds(prod in any::<u32>(), cons in any::<u32>(), rsp_cons in any::<u32>(), max in 0usize..3000) {
        let r = Ring::anonymous();
        r.guest_set(GuestField::ReqProd, prod);
        match r.read(cons, max) {
            Ok((bytes, next)) => {
                prop_assert!(prod.wrapping_sub(cons) <= RING_SIZE);
                prop_assert!(bytes.len() <= max.min(RING_SIZE as usize));
                prop_assert_eq!(next, cons.wrapping_add(bytes.len() as u32));
            }
            Err(_) => prop_assert!(prod.wrapping_sub(cons) > RING_SIZE),
        }
        r.guest_set(GuestField::RspCons, rsp_cons);
        match r.write(&[1u8; 2000]) {
            Ok(n) => prop_assert!(n <= RING_SIZE as usize),
            Err(_) => prop_assert!(r.rsp_prod().wrapping_sub(rsp_cons) > RING_SIZE),
        }
    }

    #[test]
    fn guest_requests_never_panic_and_replies_fit(msgs in proptest::collection::vec(message(), 1..40)) {
        let mut xs = Xenstored::new(Quota::default());
        let guest = xs.connect(Caller::guest(1), true);
        let dom0 = xs.connect(Caller::DOM0, false);
        xs.handle(dom0, Message::new(ty::MKDIR, 1, 0, b"/local/domain/1\0".to_vec()));
        xs.handle(dom0, Message::new(ty::SET_PERMS, 2, 0, b"/local/domain/1\0n1\0".to_vec()));
        for m in msgs {
            let _ = xs.handle(guest, m.clone());
            let _ = xs.handle(dom0, m);
        }
        for id in [guest, dom0] {
            let c = xs.conns.get_mut(&id).unwrap();
            let bytes: Vec<u8> = c.output.drain(..).collect();
            let mut d = Decoder::default();
            d.push(&bytes);
            while let Some(m) = d.next_message().expect("replies are well formed") {
                prop_assert!(m.payload.len() <= PAYLOAD_MAX);
            }
            prop_assert_eq!(d.pending(), 0);
        }
    }
}
