internal import COpenSSL

/// Calls `body` with a pointer to the bytes and their count. The pointer is never nil, even
/// for an empty array: several OpenSSL functions memcpy from their input unconditionally,
/// and a null source is undefined behaviour even with a zero length.
func withNonNullBytes<Result>(
    _ bytes: [UInt8],
    _ body: (UnsafePointer<UInt8>, Int) throws -> Result
) rethrows -> Result {
    if bytes.isEmpty {
        var placeholder: UInt8 = 0
        return try withUnsafePointer(to: &placeholder) { try body($0, 0) }
    }
    return try bytes.withUnsafeBufferPointer { buffer in
        // Non-empty arrays always have storage.
        guard let base = buffer.baseAddress else { preconditionFailure("non-empty array without storage") }
        return try body(base, buffer.count)
    }
}

/// Converts a length for an OpenSSL `int` parameter, throwing rather than truncating.
func int32Length(_ count: Int, _ what: String) throws -> Int32 {
    guard let value = Int32(exactly: count) else {
        throw CryptoError.invalidLength("\(what) is longer than \(Int32.max) bytes")
    }
    return value
}

/// Runs an OpenSSL call that returns 1 (or a positive value) on success and throws `.openssl` otherwise.
func check(_ result: Int32, _ function: String) throws {
    guard result > 0 else { throw CryptoError.openssl(function) }
}
