//! The metadata file: what survives a reopen, what a corrupt or truncated file is refused for, and its sparse table.

use super::*;

fn new_meta(dir: &Path, len: Option<u64>) -> (PathBuf, TaskId, Meta) {
    let id = TaskId([7; 32]);
    let path = dir.join(format!("{id}.meta"));
    let m = Meta::create(
        &path,
        &NewMeta {
            id,
            url: "http://o.test/x",
            content_length: len,
            piece_length: 1 << 16,
            expected_sha256: Some([9; 32]),
            digest_announced: false,
            credentialed: false,
            created_ms: 5,
        },
    )
    .unwrap();
    (path, id, m)
}

#[test]
fn a_fuzz_image_carries_the_piece_table_the_input_ends_with() {
    // Found by the first fuzz run with overflow checks: the table was always empty before.
    let head = 1 + OFF_URL + (OFF_LAST_ACCESS + 8 - OFF_STATE);
    let mut data = vec![0u8; head + 2 + 3];
    data[0] = 1;
    data[head + 1] = 3;
    data.extend_from_slice(&[0xab; 8 * 5 + 3]);
    let (image, _) = fuzz_image(&data);
    assert_eq!(image.len(), HEADER_SIZE + 8 * 5, "five whole entries, the ragged tail dropped");
    assert_eq!(get32(&image, OFF_CAPACITY), 5);
    assert!(fuzz_image(&[]).0.len() == HEADER_SIZE, "an empty input is a bare header");
}

#[test]
fn roundtrip_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let (path, id, m) = new_meta(dir.path(), Some(200_000));
    assert_eq!(m.capacity, 4);
    m.mark_piece(2, 0xdead_beef);
    m.set_actual_sha256(&[3; 32]);
    drop(m);
    let m = Meta::open(&path, id).unwrap();
    assert_eq!(m.url, "http://o.test/x");
    assert_eq!(m.piece_crc(2), Some(0xdead_beef));
    assert_eq!(m.piece_crc(1), None);
    assert_eq!(m.content_length(), Some(200_000));
    assert_eq!(m.expected_sha256, Some([9; 32]));
    assert_eq!(m.actual_sha256(), Some([3; 32]));
    assert_eq!(m.state() & ST_DIRTY, ST_DIRTY);
}

#[test]
fn rejects_garbage_truncation_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (path, id, m) = new_meta(dir.path(), Some(200_000));
    drop(m);
    let good = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..100].to_vec()),
        ("truncated table", good[..good.len() - 1].to_vec()),
        ("garbage", (0..good.len()).map(|i| (i * 31 % 251) as u8).collect()),
        ("bad magic", {
            let mut g = good.clone();
            g[0] ^= 1;
            g
        }),
        ("bad version", {
            let mut g = good.clone();
            g[OFF_VERSION] = 9;
            g
        }),
        ("header bit flip", {
            let mut g = good.clone();
            g[OFF_PIECE_LENGTH + 1] ^= 4;
            g
        }),
        ("url bit flip", {
            let mut g = good.clone();
            g[OFF_URL] ^= 4;
            g
        }),
        ("bad piece word", {
            let mut g = good.clone();
            g[HEADER_SIZE + 5] = 2;
            g
        }),
        ("length beyond table", {
            let mut g = good.clone();
            g[OFF_CONTENT_LENGTH + 3] = 0x40;
            g
        }),
        ("complete without pieces", {
            let mut g = good.clone();
            g[OFF_STATE] = (ST_COMPLETE | ST_DIGEST) as u8;
            g
        }),
    ];
    for (name, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        match Meta::open(&path, id) {
            Err(StorageError::BadMetadata { .. }) => {}
            other => panic!("{name}: expected BadMetadata, got {:?}", other.map(|_| ())),
        }
    }
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(Meta::open(&path, TaskId([8; 32])), Err(StorageError::BadMetadata { .. })));
    assert!(Meta::open(&path, id).is_ok());
}

#[test]
fn unknown_length_reserves_sparse_table() {
    let dir = tempfile::tempdir().unwrap();
    let (path, id, m) = new_meta(dir.path(), None);
    assert_eq!(m.capacity, layout::UNKNOWN_LENGTH_CAPACITY);
    m.mark_piece(0, 1);
    m.set_content_length(70_000);
    drop(m);
    let m = Meta::open(&path, id).unwrap();
    assert_eq!(m.content_length(), Some(70_000));
    // A piece past the length the stream ended at is an inconsistency.
    m.mark_piece(5, 1);
    drop(m);
    assert!(Meta::open(&path, id).is_err());
}

#[test]
fn the_credentialed_mark_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, id, m) = new_meta(dir.path(), Some(10));
    assert!(!m.credentialed);
    drop(m);
    assert!(!Meta::open(&plain, id).unwrap().credentialed);
    let path = dir.path().join("c.meta");
    let url = "http://o.test/private";
    let m = Meta::create(
        &path,
        &NewMeta {
            id,
            url,
            content_length: None,
            piece_length: 1 << 16,
            expected_sha256: None,
            digest_announced: true,
            credentialed: true,
            created_ms: 5,
        },
    )
    .unwrap();
    assert!(m.credentialed && m.digest_announced);
    drop(m);
    let m = Meta::open(&path, id).unwrap();
    assert!(m.credentialed && m.digest_announced, "create flag bits 2 and 3 are read back");
}
