// What a client receives: results, errors and events, told apart by `type` and `re`.

/// Any server→client frame.
public enum ServerFrame: Sendable, Equatable {
    /// A success result for the request whose id is `re`.
    case result(re: String, Response)
    case error(ErrorFrame)
    case event(Event)

    /// The frame's bytes.
    public func encode() -> [UInt8] {
        switch self {
        case .result(let re, let response): return ResultFrame(re: re, response: response).encode()
        case .error(let error): return error.encode()
        case .event(let event): return event.encode()
        }
    }

    /// Decodes a server frame. `type` `error` is an error frame, `event.*` an event
    /// (no `re`), any request type with a string `re` a result. Unknown fields are ignored.
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> ServerFrame {
        let json: JSONValue
        do throws(JSONParseError) {
            json = try JSONParser.parse(bytes)
        } catch {
            throw DecodeError(field: "", reason: "not JSON: \(error)")
        }
        return try decode(json: json)
    }

    /// Decodes an already parsed server frame.
    public static func decode(json: JSONValue) throws(DecodeError) -> ServerFrame {
        let reader = try FieldReader(json)
        let typeName = try reader.string("type")
        if typeName == "error" {
            return .error(try ErrorFrame(reader: reader))
        }
        if let eventType = EventType(rawValue: typeName) {
            return .event(try Event(type: eventType, reader: reader))
        }
        guard let type = RequestType(rawValue: typeName) else {
            throw DecodeError(field: "type", reason: "unknown type \"\(typeName)\"")
        }
        let re = try reader.string("re")
        return .result(re: re, try Response(type: type, reader: reader))
    }
}
