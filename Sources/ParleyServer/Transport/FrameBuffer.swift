import CLibWebSockets

/// One encoded frame with the `LWS_PRE` headroom `lws_write` needs in front of it.
///
/// Shared between queues: a message fanned out to many subscribers is encoded once and
/// every queue holds the same buffer. lws writes the WebSocket header into the headroom
/// on each `lws_write` of a lone frame, which is safe because only the service thread
/// writes and a partial write is copied by lws into its own buffer; several queued frames
/// are instead copied, with headers, into one `RawBatch` (`Relay.coalesce`).
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

/// Bytes for one raw write, with the `LWS_PRE` headroom in front (filled by `append`).
final class RawBatch {
    private let storage: UnsafeMutablePointer<UInt8>
    private let capacity: Int
    /// Bytes used, headroom included.
    private(set) var count = FrameBuffer.headroom

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
    }

    deinit { storage.deallocate() }

    var payload: UnsafeMutablePointer<UInt8> { storage + FrameBuffer.headroom }

    func append(_ byte: UInt8) {
        precondition(count < capacity)
        storage[count] = byte
        count += 1
    }

    func append(_ bytes: UnsafePointer<UInt8>, count length: Int) {
        precondition(count + length <= capacity)
        (storage + count).update(from: bytes, count: length)
        count += length
    }
}
