/// Strict base64 (RFC 4648 §4) and base64url without padding (RFC 4648 §5).
///
/// Decoding accepts exactly one spelling of each byte string: no whitespace, no missing or
/// extra padding, no characters of the other alphabet, and no non-zero bits left over in the
/// last character. Anything else throws `Base64.DecodingError`.
///
/// Its own module because both the protocol layer (frame fields) and the crypto layer
/// (fingerprints, digests, challenge answers) need it and neither may import the other.
public enum Base64 {
    /// The text is not strict base64 of the expected alphabet.
    public struct DecodingError: Error, Equatable, Sendable, CustomStringConvertible {
        public init() {}
        public var description: String { "invalid base64" }
    }

    /// Appends the padded standard base64 text of `bytes` to `output` (for JSON writers).
    public static func encode(_ bytes: [UInt8], into output: inout [UInt8]) {
        output.append(contentsOf: encode(bytes).utf8)
    }

    /// Standard base64 with `=` padding, as used for every binary value on the wire.
    public static func encode(_ bytes: [UInt8]) -> String {
        encode(bytes, table: standardEncoding, padded: true)
    }

    /// Decodes strict standard base64 with padding. The empty string decodes to no bytes.
    public static func decode(_ string: String) throws -> [UInt8] {
        try withUTF8(string) { try decode($0, table: standardDecoding, padded: true) }
    }

    /// base64url (`-` and `_`) without padding, as used for passkeys and session tokens.
    public static func encodeURL(_ bytes: [UInt8]) -> String {
        encode(bytes, table: urlEncoding, padded: false)
    }

    /// Decodes strict base64url without padding; `=`, `+` and `/` are rejected.
    public static func decodeURL(_ string: String) throws -> [UInt8] {
        try withUTF8(string) { try decode($0, table: urlDecoding, padded: false) }
    }

    // MARK: - Tables

    private static let standardEncoding: [UInt8] =
        Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let urlEncoding: [UInt8] =
        Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let standardDecoding = decodingTable(standardEncoding)
    private static let urlDecoding = decodingTable(urlEncoding)

    private static let invalid: UInt8 = 0xFF
    private static let pad = UInt8(ascii: "=")

    /// 256 entries: the 6-bit value of each alphabet character, `invalid` for everything else.
    private static func decodingTable(_ alphabet: [UInt8]) -> [UInt8] {
        var table = [UInt8](repeating: invalid, count: 256)
        for (value, character) in alphabet.enumerated() { table[Int(character)] = UInt8(value) }
        return table
    }

    // MARK: - Encoding

    private static func encode(_ bytes: [UInt8], table: [UInt8], padded: Bool) -> String {
        let count = bytes.count
        let remainder = count % 3
        let outputCount = (count / 3) * 4 + (remainder == 0 ? 0 : (padded ? 4 : remainder + 1))
        return String(unsafeUninitializedCapacity: outputCount) { output in
            bytes.withUnsafeBufferPointer { input in
                table.withUnsafeBufferPointer { table in
                    var i = 0
                    var o = 0
                    while i + 3 <= count {
                        let v = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
                        output[o] = table[Int(v >> 18)]
                        output[o + 1] = table[Int((v >> 12) & 63)]
                        output[o + 2] = table[Int((v >> 6) & 63)]
                        output[o + 3] = table[Int(v & 63)]
                        i += 3
                        o += 4
                    }
                    if remainder == 1 {
                        let v = UInt32(input[i]) << 16
                        output[o] = table[Int(v >> 18)]
                        output[o + 1] = table[Int((v >> 12) & 63)]
                        o += 2
                        if padded {
                            output[o] = pad
                            output[o + 1] = pad
                            o += 2
                        }
                    } else if remainder == 2 {
                        let v = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8
                        output[o] = table[Int(v >> 18)]
                        output[o + 1] = table[Int((v >> 12) & 63)]
                        output[o + 2] = table[Int((v >> 6) & 63)]
                        o += 3
                        if padded {
                            output[o] = pad
                            o += 1
                        }
                    }
                    return o
                }
            }
        }
    }

    // MARK: - Decoding

    private static func withUTF8<Result>(
        _ string: String,
        _ body: (UnsafeBufferPointer<UInt8>) throws -> Result
    ) throws -> Result {
        // Native Swift strings are contiguous UTF-8, so this is the fast path.
        if let result = try string.utf8.withContiguousStorageIfAvailable(body) { return result }
        return try Array(string.utf8).withUnsafeBufferPointer(body)
    }

    private static func decode(
        _ input: UnsafeBufferPointer<UInt8>,
        table: [UInt8],
        padded: Bool
    ) throws -> [UInt8] {
        var count = input.count
        if padded {
            guard count % 4 == 0 else { throw DecodingError() }
            // At most two `=`, and only at the very end; any other `=` fails the table lookup.
            if count > 0, input[count - 1] == pad {
                count -= 1
                if input[count - 1] == pad { count -= 1 }
            }
        }
        let remainder = count % 4
        guard remainder != 1 else { throw DecodingError() }
        let outputCount = (count / 4) * 3 + (remainder == 0 ? 0 : remainder - 1)

        return try [UInt8](unsafeUninitializedCapacity: outputCount) { output, initialized in
            try table.withUnsafeBufferPointer { table in
                var i = 0
                var o = 0
                while i + 4 <= count {
                    let a = table[Int(input[i])]
                    let b = table[Int(input[i + 1])]
                    let c = table[Int(input[i + 2])]
                    let d = table[Int(input[i + 3])]
                    // `invalid` is the only table value with the top bit set.
                    guard (a | b | c | d) & 0x80 == 0 else { throw DecodingError() }
                    let v = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                    output[o] = UInt8(truncatingIfNeeded: v >> 16)
                    output[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
                    output[o + 2] = UInt8(truncatingIfNeeded: v)
                    i += 4
                    o += 3
                }
                if remainder == 2 {
                    let a = table[Int(input[i])]
                    let b = table[Int(input[i + 1])]
                    // The 4 low bits of the second character fall outside the byte: they must be zero.
                    guard (a | b) & 0x80 == 0, b & 0x0F == 0 else { throw DecodingError() }
                    output[o] = a << 2 | b >> 4
                    o += 1
                } else if remainder == 3 {
                    let a = table[Int(input[i])]
                    let b = table[Int(input[i + 1])]
                    let c = table[Int(input[i + 2])]
                    // The 2 low bits of the third character fall outside the bytes: they must be zero.
                    guard (a | b | c) & 0x80 == 0, c & 0x03 == 0 else { throw DecodingError() }
                    output[o] = a << 2 | b >> 4
                    output[o + 1] = (b & 0x0F) << 4 | c >> 2
                    o += 2
                }
                initialized = o
            }
        }
    }
}
