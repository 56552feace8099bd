@testable import ParleyServer
import XCTest

/// Frames coalesced into one raw write: RFC 6455 server frames (FIN, text, unmasked) with
/// each of the three length encodings, back to back, payloads intact.
final class CoalesceTests: XCTestCase {
    func testFramesAreLaidOutAsWebSocketFrames() throws {
        let sizes = [0, 125, 126, 65_535, 65_536, 70_000]
        let frames = sizes.enumerated().map { index, size in
            FrameBuffer(Array(repeating: UInt8(0x41 + index), count: size))
        }
        let batch = Relay.coalesce(frames)
        let bytes = Array(UnsafeBufferPointer(start: batch.payload, count: batch.count - FrameBuffer.headroom))

        var offset = 0
        for (index, size) in sizes.enumerated() {
            XCTAssertEqual(bytes[offset], 0x81, "FIN + text")
            var length = Int(bytes[offset + 1])
            XCTAssertEqual(length & 0x80, 0, "server frames are not masked")
            offset += 2
            if length == 126 {
                length = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
                offset += 2
            } else if length == 127 {
                length = bytes[offset..<offset + 8].reduce(0) { $0 << 8 | Int($1) }
                offset += 8
            }
            XCTAssertEqual(length, size)
            XCTAssertEqual(Array(bytes[offset..<offset + length]), Array(repeating: UInt8(0x41 + index), count: size))
            offset += length
        }
        XCTAssertEqual(offset, bytes.count, "nothing after the last frame")
    }
}
