// The server's entry point for incoming frames, implementing the §10 order of checks:
// the envelope, then `unknown_type`, then every field of that type. Everything this
// decoder rejects is part of the frame shape, so the server answers it before
// `unauthenticated` and before any membership check.

/// Why a client frame was refused before it reached any request logic.
public struct RequestRejection: Error, Sendable, Equatable {
    /// The request id when it was a string of 1...64 characters, else nil.
    public var re: String?
    /// `bad_request` or `unknown_type`.
    public var code: ErrorCode
    /// Human text naming the problem and, for a bad field, its path.
    public var message: String
    /// The offending field's path when one is to blame (`iv`, `membership.members[1]`).
    public var field: String?

    public init(re: String?, code: ErrorCode, message: String, field: String? = nil) {
        self.re = re
        self.code = code
        self.message = message
        self.field = field
    }

    /// The rejection for a binary WebSocket frame (`bad_request`, `re` null).
    public static let binaryFrame = RequestRejection(
        re: nil, code: .badRequest, message: "binary frames are not accepted")

    /// The error frame to send back.
    public var errorFrame: ErrorFrame {
        ErrorFrame(re: re, code: code, message: message)
    }
}

/// Decodes client→server frames.
public enum RequestDecoder {
    /// Decodes one text frame: either a typed request or the rejection to answer.
    public static func decode(_ bytes: [UInt8]) -> Result<RequestFrame, RequestRejection> {
        do throws(JSONParseError) {
            return decode(json: try JSONParser.parse(bytes))
        } catch {
            return .failure(RequestRejection(re: nil, code: .badRequest, message: "not JSON: \(error)"))
        }
    }

    /// Decodes one text frame straight from the receive buffer.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<RequestFrame, RequestRejection> {
        do throws(JSONParseError) {
            return decode(json: try JSONParser.parse(bytes))
        } catch {
            return .failure(RequestRejection(re: nil, code: .badRequest, message: "not JSON: \(error)"))
        }
    }

    /// Decodes an already parsed frame.
    public static func decode(json: JSONValue) -> Result<RequestFrame, RequestRejection> {
        guard case .object(let object) = json else {
            return .failure(RequestRejection(re: nil, code: .badRequest, message: "frame is not a JSON object"))
        }
        // The id comes first: it is echoed as `re` even when `type` is bad.
        let id: String
        switch object["id"] {
        case .string(let text)? where Limits.requestIDLength.contains(text.unicodeScalars.count):
            id = text
        case nil, .null?:
            return .failure(rejection(nil, DecodeError(field: "id", reason: "missing")))
        case .string?:
            return .failure(rejection(nil, DecodeError(field: "id", reason: "expected 1 to 64 characters")))
        case .some:
            return .failure(rejection(nil, DecodeError(field: "id", reason: "expected string")))
        }
        let typeName: String
        switch object["type"] {
        case .string(let text)?:
            typeName = text
        case nil, .null?:
            return .failure(rejection(id, DecodeError(field: "type", reason: "missing")))
        case .some:
            return .failure(rejection(id, DecodeError(field: "type", reason: "expected string")))
        }
        guard let type = RequestType(rawValue: typeName) else {
            return .failure(
                RequestRejection(re: id, code: .unknownType, message: "unknown type \"\(typeName)\"", field: "type"))
        }
        do throws(DecodeError) {
            let request = try Request(type: type, reader: FieldReader(object))
            return .success(RequestFrame(id: id, request: request))
        } catch {
            return .failure(rejection(id, error))
        }
    }

    private static func rejection(_ re: String?, _ error: DecodeError) -> RequestRejection {
        RequestRejection(re: re, code: .badRequest, message: "bad field \(error.field): \(error.reason)", field: error.field)
    }
}
