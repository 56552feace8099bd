// libFuzzer target for everything the relay does with the bytes of one received WebSocket
// text message before any request logic runs: `RequestDecoder` (JSON parser, field
// reader, strict base64, ids), and the JSON writer and base64 encoder that must agree
// with them. Built and run by `scripts/fuzz`; see docs/fuzzing.md.
//
// Rejections (`RequestRejection`, `JSONParseError`, `DecodeError`, `Base64.DecodingError`)
// are expected outcomes. Only a trap, a sanitizer report, a leak or a timeout is a
// failure, and the invariants below (`invariant`, a `precondition` that keeps its message) trap on a logic bug.

import ParleyEncoding
import ParleyProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func parleyFuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    let bytes = [UInt8](raw)
    checkFrameDecoder(bytes, raw: raw)
    checkJSONRoundTrip(bytes)
    checkServerSideDecoders(bytes)
    checkBase64(bytes)
    return 0
}

// MARK: - The relay's entry point: one text message -> request or rejection

func checkFrameDecoder(_ bytes: [UInt8], raw: UnsafeRawBufferPointer) {
    let decoded = RequestDecoder.decode(bytes)
    // The relay may decode straight from the receive buffer: both paths must agree.
    let fromBuffer = RequestDecoder.decode(raw)
    invariant(decoded == fromBuffer, "decode([UInt8]) and decode(UnsafeRawBufferPointer) disagree")
    // Decoding is a function of the parsed tree.
    if let json = try? JSONParser.parse(bytes) {
        invariant(RequestDecoder.decode(json: json) == decoded, "decode(json:) disagrees with decode(bytes)")
    }

    switch decoded {
    case .success(let frame):
        invariant(Limits.requestIDLength.contains(frame.id.unicodeScalars.count), "accepted an id of bad length")
        invariant(frame.request.type.rawValue.utf8.count > 0)
        // What was accepted re-encodes to a frame that parses and decodes to the same request,
        // and the encoding is canonical (encode(decode(encode(x))) == encode(x), byte for byte).
        let encoded = frame.encode()
        guard case .object = parseOrDie(encoded, "re-encoded request") else {
            invariantFailure("re-encoded request is not an object")
        }
        switch RequestDecoder.decode(encoded) {
        case .success(let again):
            invariant(again == frame, "request changed across encode/decode: \(frame) vs \(again)")
            invariant(again.encode() == encoded, "request encoding is not a fixed point")
        case .failure(let rejection):
            invariantFailure("re-encoded request rejected: \(rejection) for \(frame)")
        }
        checkRequestFields(frame.request)
    case .failure(let rejection):
        invariant(rejection.code == .badRequest || rejection.code == .unknownType, "unexpected code \(rejection.code)")
        invariant(!rejection.message.isEmpty, "empty rejection message")
        if let re = rejection.re {
            invariant(Limits.requestIDLength.contains(re.unicodeScalars.count), "re echoes an id of bad length")
        }
        // The error frame the relay sends back must itself be valid JSON that a client decodes.
        let errorBytes = rejection.errorFrame.encode()
        _ = parseOrDie(errorBytes, "error frame")
        do {
            let serverFrame = try ServerFrame.decode(errorBytes)
            guard case .error(let error) = serverFrame else { invariantFailure("error frame decoded as \(serverFrame)") }
            invariant(error == rejection.errorFrame, "error frame changed across encode/decode")
        } catch {
            invariantFailure("client cannot decode the relay's error frame: \(error)")
        }
    }
}

/// Contract checks on the typed fields of an accepted request.
func checkRequestFields(_ request: Request) {
    func checkID(_ id: ID) {
        invariant(ID.isCanonical(id.string) && id.string.utf8.count == 36, "non-canonical id \(id)")
        invariant(ID(id.string) == id)
    }
    func checkInteger(_ value: Int) {
        invariant(value >= 0 && value <= Limits.maxInteger, "integer out of the contract's range: \(value)")
    }
    func checkStatement(_ statement: MembershipStatement) {
        checkInteger(statement.version)
        checkInteger(statement.ts)
        invariant(statement.prev.isEmpty || statement.prev.count == Limits.digestBytes)
        invariant(statement.members == statement.members.sorted(), "members not sorted")
        statement.members.forEach(checkID)
        statement.ownerID.map(checkID)
        checkID(statement.signerID)
    }
    switch request {
    case .challenge(let challenge):
        checkID(challenge.challengeID)
        invariant(challenge.answer.count == Limits.digestBytes)
    case .user(.userID(let id)):
        checkID(id)
    case .channelMembers(let members):
        checkID(members.channelID)
    case .channelCreate(let create):
        checkID(create.channelID)
        invariant(Limits.channelNameLength.contains(create.name.unicodeScalars.count))
        checkStatement(create.membership)
    case .channelMembership(let membership):
        checkID(membership.channelID)
        membership.afterVersion.map(checkInteger)
    case .channelAdd(let change), .channelRemove(let change):
        checkID(change.channelID)
        checkID(change.userID)
        checkStatement(change.membership)
    case .key(let key):
        checkID(key.channelID)
        key.keyID.map(checkID)
    case .keys(let keys):
        checkID(keys.channelID)
        checkID(keys.keyID)
        keys.previousKeyID.map(checkID)
        checkInteger(keys.membershipVersion)
        invariant(keys.digest.count == Limits.digestBytes)
        keys.encryptedKeys.forEach { checkID($0.userID) }
    case .message(let message):
        checkID(message.channelID)
        checkID(message.keyID)
        checkID(message.clientMsgID)
        invariant(message.iv.count == Limits.ivBytes)
        invariant(message.ciphertext.count >= Limits.minCiphertextBytes)
        checkInteger(message.ts)
    case .messages(let messages):
        checkID(messages.channelID)
        messages.after.map(checkInteger)
        messages.before.map(checkInteger)
        if let limit = messages.limit { invariant((1...Limits.historyMaxLimit).contains(limit)) }
        invariant((1...Limits.historyMaxLimit).contains(messages.effectiveLimit))
    case .subscribe(let subscribe):
        for channel in subscribe.channels {
            checkID(channel.channelID)
            channel.after.map(checkInteger)
        }
    case .unsubscribe(let unsubscribe):
        unsubscribe.channelIDs.forEach(checkID)
    case .signup, .login, .auth, .logout, .user(.username), .channels, .ping:
        break
    }
}

// MARK: - JSON: parse -> write -> parse

func checkJSONRoundTrip(_ bytes: [UInt8]) {
    let value: JSONValue
    do throws(JSONParseError) {
        value = try JSONParser.parse(bytes)
    } catch {
        invariant(error.offset >= 0 && error.offset <= bytes.count, "error offset \(error.offset) outside the input")
        invariant(!error.reason.isEmpty)
        return
    }
    // The raw-buffer entry point must agree with the array one.
    let viaBuffer = bytes.withUnsafeBytes { try? JSONParser.parse($0) }
    invariant(viaBuffer.map { same($0, value) } == true, "parse([UInt8]) and parse(UnsafeRawBufferPointer) disagree")
    // Whatever parses is valid UTF-8 (the parser validates strings; everything else is ASCII).
    invariant(String(validating: bytes, as: UTF8.self) != nil, "parser accepted invalid UTF-8")

    let written = value.encoded()
    let reparsed = parseOrDie(written, "written JSON")
    // Equal up to the one documented loss: a number too large for a Double (`1e400`) parses
    // as an infinity, which the writer writes as `null` (as JavaScript does).
    invariant(same(reparsed, finite(value)), "JSON round trip changed the value:\n  \(value)\n  \(reparsed)")
    invariant(reparsed == finite(value), "JSONValue == disagrees with the structural comparison")
    // The writer's output is a fixed point of parse/write, byte for byte.
    invariant(reparsed.encoded() == written, "JSON writer output is not a fixed point")
}

/// Strict structural equality: strings and keys byte for byte (Swift's `==` on String
/// uses canonical equivalence), keys in the same order, numbers by bit pattern.
func same(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.null, .null): return true
    case (.bool(let x), .bool(let y)): return x == y
    case (.integer(let x), .integer(let y)): return x == y
    case (.number(let x), .number(let y)): return x.bitPattern == y.bitPattern
    case (.string(let x), .string(let y)): return x.utf8.elementsEqual(y.utf8)
    case (.array(let x), .array(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
    case (.object(let x), .object(let y)):
        let ex = x.entries, ey = y.entries
        return ex.count == ey.count
            && zip(ex, ey).allSatisfy { $0.key.utf8.elementsEqual($1.key.utf8) && same($0.value, $1.value) }
    default: return false
    }
}

/// The value with every non-finite number replaced by `null`.
func finite(_ value: JSONValue) -> JSONValue {
    switch value {
    case .number(let number) where !number.isFinite: return .null
    case .array(let elements): return .array(elements.map(finite))
    case .object(let object): return .object(JSONObject(object.entries.map { ($0.key, finite($0.value)) }))
    default: return value
    }
}

func parseOrDie(_ bytes: [UInt8], _ what: String) -> JSONValue {
    do throws(JSONParseError) {
        return try JSONParser.parse(bytes)
    } catch {
        invariantFailure("\(what) does not parse (\(error)): \(String(decoding: bytes, as: UTF8.self))")
    }
}

// MARK: - Decoders of relay-written frames (the client's side of the same bytes)

func checkServerSideDecoders(_ bytes: [UInt8]) {
    if let frame = try? ServerFrame.decode(bytes) {
        let encoded = frame.encode()
        _ = parseOrDie(encoded, "re-encoded server frame")
        guard let again = try? ServerFrame.decode(encoded) else {
            invariantFailure("re-encoded server frame rejected: \(frame)")
        }
        invariant(again == frame, "server frame changed across encode/decode")
        invariant(again.encode() == encoded, "server frame encoding is not a fixed point")
    }
    if let plaintext = try? MessagePlaintext.decode(bytes) {
        let encoded = plaintext.encode()
        guard let again = try? MessagePlaintext.decode(encoded) else {
            invariantFailure("re-encoded message plaintext rejected")
        }
        invariant(again == plaintext && again.body.utf8.elementsEqual(plaintext.body.utf8))
    }
}

// MARK: - Strict base64

func checkBase64(_ bytes: [UInt8]) {
    // Any byte string encodes to text that decodes back to it, in both alphabets.
    let standard = Base64.encode(bytes)
    invariant((try? Base64.decode(standard)) == bytes, "base64 encode/decode lost bytes")
    invariant(standard.utf8.count == (bytes.count + 2) / 3 * 4)
    let url = Base64.encodeURL(bytes)
    invariant((try? Base64.decodeURL(url)) == bytes, "base64url encode/decode lost bytes")
    invariant(!url.utf8.contains(where: { $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "/") }))

    // Strictness: exactly one spelling per byte string, so decode -> encode gives the input back.
    guard let text = String(validating: bytes, as: UTF8.self) else { return }
    checkBase64Text(text)
    // Frame fields are where base64 meets hostile text: check every string of a JSON input.
    if let value = try? JSONParser.parse(bytes) { forEachString(value, checkBase64Text) }
}

func checkBase64Text(_ text: String) {
    if let decoded = try? Base64.decode(text) {
        invariant(Base64.encode(decoded).utf8.elementsEqual(text.utf8), "two base64 spellings accepted: \(text)")
    }
    if let decoded = try? Base64.decodeURL(text) {
        invariant(Base64.encodeURL(decoded).utf8.elementsEqual(text.utf8), "two base64url spellings accepted: \(text)")
    }
    if let id = ID(text) {
        invariant(id.string.utf8.elementsEqual(text.utf8) && ID.isCanonical(text))
    }
}

func forEachString(_ value: JSONValue, _ body: (String) -> Void) {
    switch value {
    case .string(let text): body(text)
    case .array(let elements): elements.forEach { forEachString($0, body) }
    case .object(let object):
        for (key, member) in object.entries {
            body(key)
            forEachString(member, body)
        }
    default: break
    }
}

// MARK: - Invariants

// `precondition` would do, but in -O builds it traps without its message; these print it
// ("Fatal error: ...") before libFuzzer's crash report.

func invariant(
    _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String = "invariant failed",
    file: StaticString = #fileID, line: UInt = #line
) {
    if !condition() { invariantFailure(message(), file: file, line: line) }
}

func invariantFailure(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    fatalError("invariant failed: \(message)", file: file, line: line)
}
