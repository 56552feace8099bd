// A strict RFC 8259 parser over UTF-8 bytes. It validates the encoding as it scans,
// bounds nesting so that hostile input cannot exhaust the stack, and never reads
// outside its input: every access is preceded by an explicit bounds check.

/// Why a byte sequence is not an acceptable JSON text.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset at which the problem was found.
    public let offset: Int
    /// What is wrong, e.g. "leading zero" or "invalid UTF-8".
    public let reason: String

    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "\(reason) at byte \(offset)" }
}

/// Parses JSON texts strictly: no comments, no trailing commas, no leading zeros, no
/// `NaN`, no control characters in strings, no lone surrogate escapes, no invalid UTF-8,
/// only RFC whitespace, no byte-order mark, nothing after the value.
public enum JSONParser {
    /// The default bound on nesting of arrays and objects.
    public static let defaultMaxDepth = 64

    /// Parses one JSON text from `bytes`.
    public static func parse(
        _ bytes: [UInt8], maxDepth: Int = defaultMaxDepth
    ) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> JSONValue in
            var parser = ByteParser(buffer: buffer, maxDepth: maxDepth)
            return try parser.parseDocument()
        }
    }

    /// Parses one JSON text from raw memory (e.g. a frame received from the socket),
    /// without copying it first.
    public static func parse(
        _ bytes: UnsafeRawBufferPointer, maxDepth: Int = defaultMaxDepth
    ) throws(JSONParseError) -> JSONValue {
        let buffer = bytes.bindMemory(to: UInt8.self)
        var parser = ByteParser(buffer: buffer, maxDepth: maxDepth)
        return try parser.parseDocument()
    }

    /// Parses one JSON text from a Swift string (its UTF-8 encoding).
    public static func parse(
        _ text: String, maxDepth: Int = defaultMaxDepth
    ) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }
}

private enum Byte {
    static let quote: UInt8 = 0x22
    static let backslash: UInt8 = 0x5C
    static let slash: UInt8 = 0x2F
    static let comma: UInt8 = 0x2C
    static let colon: UInt8 = 0x3A
    static let openBracket: UInt8 = 0x5B
    static let closeBracket: UInt8 = 0x5D
    static let openBrace: UInt8 = 0x7B
    static let closeBrace: UInt8 = 0x7D
    static let minus: UInt8 = 0x2D
    static let plus: UInt8 = 0x2B
    static let dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30
    static let nine: UInt8 = 0x39
    static let lowerE: UInt8 = 0x65
    static let upperE: UInt8 = 0x45
}

private struct ByteParser {
    let buffer: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var pos = 0

    init(buffer: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.buffer = buffer
        self.maxDepth = maxDepth
    }

    func fail(_ reason: String) -> JSONParseError {
        JSONParseError(offset: pos, reason: reason)
    }

    /// The byte at `pos`, or nil at the end of input.
    @inline(__always) func peek() -> UInt8? {
        pos < buffer.count ? buffer[pos] : nil
    }

    @inline(__always) static func isDigit(_ byte: UInt8) -> Bool {
        byte >= Byte.zero && byte <= Byte.nine
    }

    mutating func skipWhitespace() {
        while pos < buffer.count {
            switch buffer[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        let value = try parseValue(depth: 0)
        skipWhitespace()
        if pos != buffer.count { throw fail("unexpected data after the value") }
        return value
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        guard let byte = peek() else { throw fail("unexpected end of input") }
        switch byte {
        case Byte.openBrace: return try parseObject(depth: depth + 1)
        case Byte.openBracket: return try parseArray(depth: depth + 1)
        case Byte.quote: return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case Byte.minus, Byte.zero...Byte.nine:
            return try parseNumber()
        default:
            throw fail(byte >= 0x80 ? "unexpected non-ASCII byte" : "unexpected character")
        }
    }

    mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard buffer.count - pos >= count else { throw fail("invalid literal") }
        let start = literal.utf8Start
        for index in 0..<count where buffer[pos + index] != start[index] {
            throw fail("invalid literal")
        }
        pos += count
    }

    mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        if depth > maxDepth { throw fail("nesting deeper than \(maxDepth)") }
        pos += 1  // '{'
        var object = JSONObject()
        skipWhitespace()
        if peek() == Byte.closeBrace {
            pos += 1
            return .object(object)
        }
        while true {
            skipWhitespace()
            guard peek() == Byte.quote else { throw fail("expected a string key") }
            let key = try parseString()
            skipWhitespace()
            guard peek() == Byte.colon else { throw fail("expected ':'") }
            pos += 1
            let value = try parseValue(depth: depth)
            object[key] = value
            skipWhitespace()
            switch peek() {
            case Byte.comma: pos += 1
            case Byte.closeBrace:
                pos += 1
                return .object(object)
            case nil: throw fail("unterminated object")
            default: throw fail("expected ',' or '}'")
            }
        }
    }

    mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        if depth > maxDepth { throw fail("nesting deeper than \(maxDepth)") }
        pos += 1  // '['
        var elements: [JSONValue] = []
        skipWhitespace()
        if peek() == Byte.closeBracket {
            pos += 1
            return .array(elements)
        }
        while true {
            elements.append(try parseValue(depth: depth))
            skipWhitespace()
            switch peek() {
            case Byte.comma: pos += 1
            case Byte.closeBracket:
                pos += 1
                return .array(elements)
            case nil: throw fail("unterminated array")
            default: throw fail("expected ',' or ']'")
            }
        }
    }

    // MARK: Strings

    /// Parses a string starting at the opening quote.
    mutating func parseString() throws(JSONParseError) -> String {
        pos += 1  // opening quote
        var runStart = pos
        var unescaped: [UInt8]? = nil  // only allocated once an escape shows up
        while true {
            guard pos < buffer.count else { throw fail("unterminated string") }
            let byte = buffer[pos]
            if byte == Byte.quote {
                let run = UnsafeBufferPointer(rebasing: buffer[runStart..<pos])
                pos += 1
                if var scratch = unescaped {
                    unescaped = nil
                    scratch.append(contentsOf: run)
                    return String(decoding: scratch, as: UTF8.self)
                }
                return String(decoding: run, as: UTF8.self)
            } else if byte == Byte.backslash {
                var scratch = unescaped ?? []
                unescaped = nil
                scratch.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[runStart..<pos]))
                try parseEscape(into: &scratch)
                unescaped = scratch
                runStart = pos
            } else if byte < 0x20 {
                throw fail("control character in string")
            } else if byte < 0x80 {
                pos += 1
            } else {
                try skipMultibyteScalar()
            }
        }
    }

    /// Validates one multi-byte UTF-8 sequence at `pos` (Unicode table 3-7: no overlong
    /// forms, no surrogates, nothing above U+10FFFF) and moves past it.
    mutating func skipMultibyteScalar() throws(JSONParseError) {
        let lead = buffer[pos]
        let length: Int
        var secondLow: UInt8 = 0x80
        var secondHigh: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondLow = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondHigh = 0x9F
        case 0xF0: length = 4; secondLow = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondHigh = 0x8F
        default: throw fail("invalid UTF-8")
        }
        guard buffer.count - pos >= length else { throw fail("invalid UTF-8") }
        let second = buffer[pos + 1]
        guard second >= secondLow && second <= secondHigh else { throw fail("invalid UTF-8") }
        var index = 2
        while index < length {
            let continuation = buffer[pos + index]
            guard continuation & 0xC0 == 0x80 else { throw fail("invalid UTF-8") }
            index += 1
        }
        pos += length
    }

    /// Parses an escape starting at the backslash and appends its UTF-8 to `out`.
    mutating func parseEscape(into out: inout [UInt8]) throws(JSONParseError) {
        pos += 1  // backslash
        guard let byte = peek() else { throw fail("unterminated escape") }
        pos += 1
        switch byte {
        case Byte.quote: out.append(Byte.quote)
        case Byte.backslash: out.append(Byte.backslash)
        case Byte.slash: out.append(Byte.slash)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
            let unit = try parseHex4()
            var scalarValue = UInt32(unit)
            if (0xD800...0xDBFF).contains(unit) {
                guard buffer.count - pos >= 2, buffer[pos] == Byte.backslash,
                    buffer[pos + 1] == UInt8(ascii: "u")
                else { throw fail("lone surrogate escape") }
                pos += 2
                let low = try parseHex4()
                guard (0xDC00...0xDFFF).contains(low) else { throw fail("lone surrogate escape") }
                scalarValue = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
            } else if (0xDC00...0xDFFF).contains(unit) {
                throw fail("lone surrogate escape")
            }
            appendUTF8(scalarValue, to: &out)
        default:
            throw fail("invalid escape")
        }
    }

    /// Appends the UTF-8 form of a scalar value (surrogates were excluded by the caller).
    func appendUTF8(_ value: UInt32, to out: inout [UInt8]) {
        switch value {
        case 0..<0x80:
            out.append(UInt8(value))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | (value >> 6)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | (value >> 12)))
            out.append(UInt8(0x80 | ((value >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        default:
            out.append(UInt8(0xF0 | ((value >> 18) & 0x07)))
            out.append(UInt8(0x80 | ((value >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((value >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (value & 0x3F)))
        }
    }

    mutating func parseHex4() throws(JSONParseError) -> UInt16 {
        guard buffer.count - pos >= 4 else { throw fail("invalid \\u escape") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = buffer[pos]
            let digit: UInt8
            switch byte {
            case Byte.zero...Byte.nine: digit = byte - Byte.zero
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw fail("invalid \\u escape")
            }
            value = value << 4 | UInt16(digit)
            pos += 1
        }
        return value
    }

    // MARK: Numbers

    mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = pos
        let negative = peek() == Byte.minus
        if negative { pos += 1 }
        guard let first = peek(), Self.isDigit(first) else { throw fail("invalid number") }

        // Integer part, accumulated exactly while it fits in Int64 (negatively, so that
        // Int64.min fits too).
        var accumulator: Int64 = 0
        var overflow = false
        if first == Byte.zero {
            pos += 1
            if let next = peek(), Self.isDigit(next) { throw fail("leading zero") }
        } else {
            while let byte = peek(), Self.isDigit(byte) {
                if !overflow {
                    let (times10, o1) = accumulator.multipliedReportingOverflow(by: 10)
                    let (sum, o2) = times10.subtractingReportingOverflow(Int64(byte - Byte.zero))
                    if o1 || o2 { overflow = true } else { accumulator = sum }
                }
                pos += 1
            }
        }

        var isInteger = true
        if peek() == Byte.dot {
            isInteger = false
            pos += 1
            guard let byte = peek(), Self.isDigit(byte) else { throw fail("invalid number") }
            while let byte = peek(), Self.isDigit(byte) { pos += 1 }
        }
        if let byte = peek(), byte == Byte.lowerE || byte == Byte.upperE {
            isInteger = false
            pos += 1
            if let sign = peek(), sign == Byte.plus || sign == Byte.minus { pos += 1 }
            guard let byte = peek(), Self.isDigit(byte) else { throw fail("invalid number") }
            while let byte = peek(), Self.isDigit(byte) { pos += 1 }
        }

        if isInteger && !overflow {
            if negative { return .integer(accumulator) }
            let (positive, o) = Int64(0).subtractingReportingOverflow(accumulator)
            if !o { return .integer(positive) }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: buffer[start..<pos]), as: UTF8.self)
        guard let double = Double(text) else { throw JSONParseError(offset: start, reason: "invalid number") }
        return .number(double)
    }
}
