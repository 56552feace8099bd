import Foundation
import ParleyCrypto
import ParleyProtocol

// The measured path: building `message` frames and reading `event.message` frames and
// `message` results without a JSON tree. Everything else goes through ParleyProtocol.

/// The bench's message payload: opaque bytes of the requested size standing in for an
/// AES-GCM ciphertext. The relay never decrypts (§7: it checks sizes, the IV's uniqueness
/// per key, the key and `ts`), so it cannot tell, and client crypto stays off the measured
/// path. The first 24 bytes are the bench header, big-endian:
///
///     run tag (4) | sender index (4) | counter (8) | scheduled send time, CLOCK_MONOTONIC ns (8)
///
/// and the rest is random filler. 24 is a multiple of 3, so the base64 of the payload is
/// the base64 of the header followed by the base64 of the filler, computed once.
struct BenchPayload: Sendable {
    static let headerBytes = 24
    static let headerBase64Count = 32

    struct Header: Equatable, Sendable {
        var runTag: UInt32
        var sender: UInt32
        var counter: UInt64
        /// Scheduled send time (CLOCK_MONOTONIC, ns): latency counts from here.
        var sentAt: UInt64
    }

    /// base64 of the filler (size − 24 random bytes).
    let fillerBase64: [UInt8]

    init(size: Int) throws {
        let filler = try SecureRandom.bytes(count: size - Self.headerBytes)
        var base64: [UInt8] = []
        Base64Bytes.appendEncoded(filler, to: &base64)
        fillerBase64 = base64
    }

    static func appendHeaderBase64(_ header: Header, to output: inout [UInt8]) {
        var raw = [UInt8](repeating: 0, count: headerBytes)
        store(header.runTag, at: 0, in: &raw)
        store(header.sender, at: 4, in: &raw)
        store(header.counter, at: 8, in: &raw)
        store(header.sentAt, at: 16, in: &raw)
        Base64Bytes.appendEncoded(raw, to: &output)
    }

    /// The header from the first 32 base64 characters of a payload; nil when they are not
    /// base64 or the buffer is shorter.
    static func decodeHeader(_ base64: UnsafeRawBufferPointer) -> Header? {
        guard base64.count >= headerBase64Count,
              let raw = Base64Bytes.decode(UnsafeRawBufferPointer(rebasing: base64[0..<headerBase64Count]))
        else { return nil }
        return Header(
            runTag: load(UInt32.self, at: 0, in: raw), sender: load(UInt32.self, at: 4, in: raw),
            counter: load(UInt64.self, at: 8, in: raw), sentAt: load(UInt64.self, at: 16, in: raw))
    }

    private static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<MemoryLayout<T>.size {
            bytes[offset + index] = UInt8(truncatingIfNeeded: value >> ((MemoryLayout<T>.size - 1 - index) * 8))
        }
    }

    private static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: [UInt8]) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value = value << 8 | T(bytes[offset + index]) }
        return value
    }
}

/// Standard base64 without the String round trip of `Base64`: the hot path encodes a
/// 12-byte IV and a 24-byte header per message and decodes one header per delivery.
enum Base64Bytes {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in alphabet.enumerated() { table[Int(character)] = UInt8(index) }
        return table
    }()

    /// Appends the padded base64 of `bytes`.
    static func appendEncoded(_ bytes: [UInt8], to output: inout [UInt8]) {
        output.reserveCapacity(output.count + (bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= bytes.count {
            let group = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            output.append(alphabet[Int(group >> 18 & 63)])
            output.append(alphabet[Int(group >> 12 & 63)])
            output.append(alphabet[Int(group >> 6 & 63)])
            output.append(alphabet[Int(group & 63)])
            index += 3
        }
        let rest = bytes.count - index
        guard rest > 0 else { return }
        let group = UInt32(bytes[index]) << 16 | (rest == 2 ? UInt32(bytes[index + 1]) << 8 : 0)
        output.append(alphabet[Int(group >> 18 & 63)])
        output.append(alphabet[Int(group >> 12 & 63)])
        output.append(rest == 2 ? alphabet[Int(group >> 6 & 63)] : UInt8(ascii: "="))
        output.append(UInt8(ascii: "="))
    }

    /// Decodes unpadded base64 whose length is a multiple of 4.
    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        guard text.count % 4 == 0 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(text.count / 4 * 3)
        var index = 0
        while index < text.count {
            var group: UInt32 = 0
            for offset in 0..<4 {
                let value = values[Int(text[index + offset])]
                guard value != 0xFF else { return nil }
                group = group << 6 | UInt32(value)
            }
            output.append(UInt8(truncatingIfNeeded: group >> 16))
            output.append(UInt8(truncatingIfNeeded: group >> 8))
            output.append(UInt8(truncatingIfNeeded: group))
            index += 4
        }
        return output
    }
}

/// Builds one sender's `message` frames for one channel, with the lws headroom in front:
///
///     {"id":"m<counter>","type":"message","channel_id":…,"key_id":…,"iv":…,
///      "ciphertext":…,"ts":…,"client_msg_id":…}
///
/// The IV is the sender index and the counter (unique under the channel's key for the
/// run); `client_msg_id` is a random per-sender UUID prefix and the counter in hex.
struct MessageFrameBuilder: Sendable {
    private let headroom: Int
    private let afterID: [UInt8]
    private let clientMsgIDPrefix: [UInt8]
    private let payload: BenchPayload
    private let runTag: UInt32
    private let sender: UInt32

    init(headroom: Int, channelID: String, keyID: String, sender: UInt32, runTag: UInt32, payload: BenchPayload) {
        self.headroom = headroom
        self.payload = payload
        self.runTag = runTag
        self.sender = sender
        afterID = Array("\",\"type\":\"message\",\"channel_id\":\"\(channelID)\",\"key_id\":\"\(keyID)\",\"iv\":\"".utf8)
        // 20 random hex digits, version 4 and variant bits set, then 12 digits of counter.
        let random = ID.random().string
        clientMsgIDPrefix = Array(random.prefix(24).utf8)
    }

    func frame(counter: UInt64, sentAt: UInt64, ts: Int) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: headroom)
        frame.reserveCapacity(headroom + 260 + payload.fillerBase64.count)
        frame.append(contentsOf: "{\"id\":\"m".utf8)
        appendDecimal(counter, to: &frame)
        frame.append(contentsOf: afterID)

        var iv = [UInt8](repeating: 0, count: 12)
        for index in 0..<4 { iv[index] = UInt8(truncatingIfNeeded: sender >> ((3 - index) * 8)) }
        for index in 0..<8 { iv[4 + index] = UInt8(truncatingIfNeeded: counter >> ((7 - index) * 8)) }
        Base64Bytes.appendEncoded(iv, to: &frame)

        frame.append(contentsOf: "\",\"ciphertext\":\"".utf8)
        BenchPayload.appendHeaderBase64(
            BenchPayload.Header(runTag: runTag, sender: sender, counter: counter, sentAt: sentAt), to: &frame)
        frame.append(contentsOf: payload.fillerBase64)
        frame.append(contentsOf: "\",\"ts\":".utf8)
        appendDecimal(UInt64(max(0, ts)), to: &frame)
        frame.append(contentsOf: ",\"client_msg_id\":\"".utf8)
        frame.append(contentsOf: clientMsgIDPrefix)
        let hex = Array("0123456789abcdef".utf8)
        for shift in stride(from: 44, through: 0, by: -4) { frame.append(hex[Int(counter >> UInt64(shift) & 0xF)]) }
        frame.append(contentsOf: "\"}".utf8)
        return frame
    }
}

/// A raw-fanout frame: the base64 payload alone, as a text message.
func rawFrame(headroom: Int, header: BenchPayload.Header, payload: BenchPayload) -> [UInt8] {
    var frame = [UInt8](repeating: 0, count: headroom)
    frame.reserveCapacity(headroom + BenchPayload.headerBase64Count + payload.fillerBase64.count)
    BenchPayload.appendHeaderBase64(header, to: &frame)
    frame.append(contentsOf: payload.fillerBase64)
    return frame
}

private func appendDecimal(_ value: UInt64, to output: inout [UInt8]) {
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var count = 0
    var rest = value
    withUnsafeMutableBytes(of: &digits) { buffer in
        repeat {
            buffer[count] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
            count += 1
        } while rest != 0
        for index in stride(from: count - 1, through: 0, by: -1) { output.append(buffer[index]) }
    }
}

/// Reads the two frames of the measured path straight from the received bytes. Both are
/// written by the relay's compact JSON writer in a fixed field order, with string values
/// that never contain a quote (UUIDs, base64); anything unexpected returns nil and the
/// caller falls back to the full parser.
enum FrameScanner {
    /// What an `event.message` frame says.
    struct Delivery {
        /// Where the channel id's 36 characters start.
        var channelIDOffset: Int
        var seq: Int
        var header: BenchPayload.Header
    }

    /// What a `message` result says.
    struct Ack {
        var counter: UInt64
        var seq: Int
        var duplicate: Bool
    }

    private static let eventMessagePrefix = Array("{\"type\":\"event.message\",".utf8)
    private static let ackPrefix = Array("{\"re\":\"m".utf8)
    private static let ackType = Array("\",\"type\":\"message\",".utf8)
    private static let channelIDKey = Array("\"channel_id\":\"".utf8)
    private static let seqKey = Array("\"seq\":".utf8)
    private static let ciphertextKey = Array("\"ciphertext\":\"".utf8)
    private static let duplicateTrue = Array("\"duplicate\":true".utf8)

    static func isEventMessage(_ frame: UnsafeRawBufferPointer) -> Bool { hasPrefix(frame, eventMessagePrefix) }

    static func isAck(_ frame: UnsafeRawBufferPointer) -> Bool { hasPrefix(frame, ackPrefix) }

    static func delivery(_ frame: UnsafeRawBufferPointer) -> Delivery? {
        guard let channelStart = end(of: channelIDKey, in: frame, from: eventMessagePrefix.count),
              channelStart + 36 <= frame.count,
              let seqStart = end(of: seqKey, in: frame, from: channelStart + 36),
              let (seq, seqEnd) = integer(in: frame, at: seqStart),
              let payloadStart = end(of: ciphertextKey, in: frame, from: seqEnd),
              let header = BenchPayload.decodeHeader(UnsafeRawBufferPointer(rebasing: frame[payloadStart...]))
        else { return nil }
        return Delivery(channelIDOffset: channelStart, seq: seq, header: header)
    }

    static func ack(_ frame: UnsafeRawBufferPointer) -> Ack? {
        guard let (counter, counterEnd) = integer(in: frame, at: ackPrefix.count),
              hasPrefix(UnsafeRawBufferPointer(rebasing: frame[counterEnd...]), ackType),
              let seqStart = end(of: seqKey, in: frame, from: counterEnd + ackType.count),
              let (seq, seqEnd) = integer(in: frame, at: seqStart)
        else { return nil }
        let duplicate = end(of: duplicateTrue, in: frame, from: seqEnd) != nil
        return Ack(counter: UInt64(counter), seq: seq, duplicate: duplicate)
    }

    private static func hasPrefix(_ frame: UnsafeRawBufferPointer, _ prefix: [UInt8]) -> Bool {
        guard frame.count >= prefix.count else { return false }
        for index in 0..<prefix.count where frame[index] != prefix[index] { return false }
        return true
    }

    /// The offset just past the first `needle` at or after `start`.
    private static func end(of needle: [UInt8], in frame: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard let first = needle.first, start >= 0 else { return nil }
        var index = start
        let last = frame.count - needle.count
        outer: while index <= last {
            if frame[index] != first {
                index += 1
                continue
            }
            for offset in 1..<needle.count where frame[index + offset] != needle[offset] {
                index += 1
                continue outer
            }
            return index + needle.count
        }
        return nil
    }

    private static func integer(in frame: UnsafeRawBufferPointer, at start: Int) -> (Int, Int)? {
        var index = start
        var value = 0
        while index < frame.count, frame[index] >= UInt8(ascii: "0"), frame[index] <= UInt8(ascii: "9") {
            value = value &* 10 &+ Int(frame[index] - UInt8(ascii: "0"))
            index += 1
        }
        return index > start ? (value, index) : nil
    }
}
