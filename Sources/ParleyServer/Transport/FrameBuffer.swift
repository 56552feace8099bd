import CLibWebSockets

/// One encoded frame with the `LWS_PRE` headroom `lws_write` needs in front of it.
///
/// Shared between queues: a message fanned out to many subscribers is encoded once and
/// every queue holds the same buffer. lws writes the WebSocket header into the headroom
/// on each `lws_write`, which is safe because only the service thread writes, one frame
/// at a time, and a partial write is copied by lws into its own buffer.
final class FrameBuffer: @unchecked Sendable {
    static let headroom = Int(parley_lws_pre())

    let storage: UnsafeMutableRawPointer
    let count: Int

    init(_ bytes: [UInt8]) {
        count = bytes.count
        storage = UnsafeMutableRawPointer.allocate(byteCount: Self.headroom + max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress {
                (storage + Self.headroom).copyMemory(from: base, byteCount: bytes.count)
            }
        }
    }

    deinit { storage.deallocate() }

    /// Where the payload starts (after the headroom).
    var payload: UnsafeMutablePointer<UInt8> {
        (storage + Self.headroom).assumingMemoryBound(to: UInt8.self)
    }
}
