import XCTest

@testable import ParleyProtocol

final class JSONParserTests: XCTestCase {
    private func utf8(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Texts RFC 8259 accepts, with the value they must parse to.
    func testAcceptsValidTexts() throws {
        let cases: [(String, JSONValue)] = [
            ("0", .integer(0)),
            ("-0", .integer(0)),
            ("1", .integer(1)),
            ("-1", .integer(-1)),
            ("9007199254740993", .integer(9_007_199_254_740_993)),
            ("9223372036854775807", .integer(Int64.max)),
            ("-9223372036854775808", .integer(Int64.min)),
            ("9223372036854775808", .number(9_223_372_036_854_775_808.0)),
            ("123456789012345678901234567890", .number(123456789012345678901234567890.0)),
            ("1.5", .number(1.5)),
            ("1.0", .number(1.0)),
            ("1e0", .number(1.0)),
            ("1E+3", .number(1000)),
            ("25e-1", .number(2.5)),
            ("-0.0", .number(-0.0)),
            ("0.0e0", .number(0)),
            ("1e400", .number(.infinity)),
            ("-1e400", .number(-.infinity)),
            ("true", .bool(true)),
            ("false", .bool(false)),
            ("null", .null),
            ("\"\"", .string("")),
            ("\"abc\"", .string("abc")),
            ("\"\\u00e9\\u00E9\"", .string("éé")),
            ("\"\\uD83D\\uDE00\"", .string("😀")),
            ("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", .string("\"\\/\u{8}\u{C}\n\r\t")),
            ("\"\\u0000\"", .string("\u{0}")),
            ("\"é😀\u{2028}\"", .string("é😀\u{2028}")),
            ("[]", .array([])),
            ("{}", .object(JSONObject())),
            (" \t\r\n[ 1 ,\t2 ]\n ", .array([.integer(1), .integer(2)])),
            ("{ \"a\" : null }", .object(JSONObject([("a", .null)]))),
            ("[1,[2,[3,{}]]]", .array([.integer(1), .array([.integer(2), .array([.integer(3), .object(JSONObject())])])])),
            ("{\"a\":{\"b\":[true,\"c\"]}}", .object(JSONObject([("a", .object(JSONObject([("b", .array([.bool(true), .string("c")]))])))]))),
            ("{\"a\":1,\"a\":2}", .object(JSONObject([("a", .integer(2))]))),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(try JSONParser.parse(utf8(text)), expected, "input: \(text)")
        }
    }

    /// Texts RFC 8259 refuses (plus what this parser refuses on purpose: BOM, too deep).
    func testRejectsInvalidTexts() {
        let texts: [String] = [
            "", " ", "01", "-01", "00", "1.", ".5", "-", "+1", "1e", "1e+", "1.e3", "0x10", "NaN", "Infinity",
            "-Infinity", "[1,]", "{\"a\":1,}", "[,1]", "[1,,2]", "{\"a\" 1}", "{a:1}", "{'a':1}", "['a']",
            "//c\n1", "/*c*/1", "[1 2]", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\uD800\"", "\"\\uDC00\"",
            "\"\\uD800\\u0041\"", "\"\\uD800x\"", "\"\\uDBFF\\uDBFF\"", "\"a\tb\"", "\"a\nb\"", "\"\u{1F}\"",
            "tru", "nul", "True", "1 2", "{} x", "[", "]", "{", "}", "{\"a\":1}}", "\u{FEFF}1", "\u{A0}1",
            "\u{0B}1", "\u{0C}1", "{\"a\"}", "{\"a\":}", "{1:2}", "\"\\", "[\"a\",]", "-a", "1-", "truefalse",
        ]
        for text in texts {
            XCTAssertThrowsError(try JSONParser.parse(utf8(text)), "input: \(text.debugDescription)")
        }
    }

    func testRejectsInvalidUTF8() {
        let quote: UInt8 = 0x22
        let sequences: [[UInt8]] = [
            [0xC0, 0x80],  // overlong NUL
            [0xC1, 0xBF],  // overlong
            [0xFF],
            [0xFE],
            [0x80],  // lone continuation
            [0xC3],  // truncated two-byte
            [0xE2, 0x82],  // truncated three-byte
            [0xF0, 0x9F, 0x98],  // truncated four-byte
            [0xE0, 0x80, 0xAF],  // overlong three-byte
            [0xF0, 0x80, 0x80, 0xAF],  // overlong four-byte
            [0xED, 0xA0, 0x80],  // UTF-16 surrogate D800 encoded in UTF-8
            [0xED, 0xBF, 0xBF],  // surrogate DFFF
            [0xF4, 0x90, 0x80, 0x80],  // above U+10FFFF
            [0xF8, 0x88, 0x80, 0x80, 0x80],  // five-byte form
            [0xC3, 0x28],  // bad continuation
        ]
        for sequence in sequences {
            XCTAssertThrowsError(try JSONParser.parse([quote] + sequence + [quote]), "string with \(sequence)")
            // The same bytes at the end of input (no closing quote) must not read past it.
            XCTAssertThrowsError(try JSONParser.parse([quote] + sequence), "open string with \(sequence)")
        }
        // Non-ASCII outside strings is never valid.
        XCTAssertThrowsError(try JSONParser.parse([0xC3, 0xA9]))
        // Valid boundaries are accepted.
        let valid: [[UInt8]] = [[0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF]]
        for sequence in valid {
            XCTAssertEqual(try JSONParser.parse([quote] + sequence + [quote]), .string(String(decoding: sequence, as: UTF8.self)))
        }
    }

    func testNestingDepthIsBounded() {
        let atLimit = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        XCTAssertNoThrow(try JSONParser.parse(utf8(atLimit)))
        let overLimit = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        XCTAssertThrowsError(try JSONParser.parse(utf8(overLimit)))

        let hostile = [UInt8](repeating: UInt8(ascii: "["), count: 10_000)
        XCTAssertThrowsError(try JSONParser.parse(hostile)) { error in
            XCTAssertTrue((error as? JSONParseError)?.reason.contains("nesting") ?? false, "\(error)")
        }
        let objects = String(repeating: "{\"a\":", count: 10_000)
        XCTAssertThrowsError(try JSONParser.parse(utf8(objects)))
        XCTAssertNoThrow(try JSONParser.parse(utf8("[[[]]]"), maxDepth: 3))
        XCTAssertThrowsError(try JSONParser.parse(utf8("[[[]]]"), maxDepth: 2))
    }

    func testIntegerAndNumberAreDistinct() throws {
        XCTAssertEqual(try JSONParser.parse(utf8("1")), .integer(1))
        XCTAssertEqual(try JSONParser.parse(utf8("1.0")), .number(1))
        XCTAssertEqual(try JSONParser.parse(utf8("1e0")), .number(1))
        XCTAssertNotEqual(JSONValue.integer(1), JSONValue.number(1))
    }

    func testObjectKeepsKeyOrderAndLastDuplicateWins() throws {
        let value = try JSONParser.parse(utf8("{\"b\":1,\"a\":2,\"b\":3}"))
        guard case .object(let object) = value else { return XCTFail("not an object") }
        XCTAssertEqual(object.keys, ["b", "a"])
        XCTAssertEqual(object["b"], .integer(3))
        XCTAssertEqual(object["a"], .integer(2))
        XCTAssertEqual(value.encoded(), utf8("{\"b\":3,\"a\":2}"))
    }

    func testParsesFromRawBuffer() throws {
        let bytes = utf8("{\"x\":[1,2]}")
        let value = try bytes.withUnsafeBytes { try JSONParser.parse($0) }
        XCTAssertEqual(value, .object(JSONObject([("x", .array([.integer(1), .integer(2)]))])))
        XCTAssertThrowsError(try [UInt8]().withUnsafeBytes { try JSONParser.parse($0) })
    }
}

final class JSONWriterTests: XCTestCase {
    func testEscapesQuotesBackslashesAndControlCharacters() {
        let text = "a\"b\\c\nd\te\r\u{8}\u{C}\u{0}\u{1}\u{1F}\u{7F}é😀/"
        let encoded = JSONValue.string(text).encoded()
        let expected = "\"a\\\"b\\\\c\\nd\\te\\r\\b\\f\\u0000\\u0001\\u001f\u{7F}é😀/\""
        XCTAssertEqual(String(decoding: encoded, as: UTF8.self), expected)
        XCTAssertEqual(try JSONParser.parse(encoded), .string(text))
    }

    func testIntegersAreExact() {
        let values: [Int64] = [0, 1, -1, 9, 10, 99, 100, 9_007_199_254_740_991, Int64.max, Int64.min]
        for value in values {
            XCTAssertEqual(String(decoding: JSONValue.integer(value).encoded(), as: UTF8.self), String(value))
        }
    }

    func testNumbersRoundTripAndNonFiniteIsNull() throws {
        for number in [1.5, -0.25, 1e20, Double.leastNonzeroMagnitude, 1.7976931348623157e308, 0.1] {
            XCTAssertEqual(try JSONParser.parse(JSONValue.number(number).encoded()), .number(number))
        }
        XCTAssertEqual(JSONValue.number(.infinity).encoded(), Array("null".utf8))
    }

    func testCompactDocumentRoundTrip() throws {
        let value = JSONValue.object(
            JSONObject([
                ("z", .array([.null, .bool(false), .integer(-7), .number(2.5), .string("x\u{2028}")])),
                ("a", .object(JSONObject([("k\"ey", .string("v"))]))),
                ("e", .array([])),
            ]))
        let encoded = value.encoded()
        XCTAssertEqual(
            String(decoding: encoded, as: UTF8.self),
            "{\"z\":[null,false,-7,2.5,\"x\u{2028}\"],\"a\":{\"k\\\"ey\":\"v\"},\"e\":[]}")
        XCTAssertEqual(try JSONParser.parse(encoded), value)
    }

    func testWriterAppendsAfterHeadroom() {
        var writer = JSONWriter(appendingTo: [9, 9, 9])
        writer.beginObject()
        writer.field("a", 1)
        writer.endObject()
        XCTAssertEqual(writer.bytes, [9, 9, 9] + Array("{\"a\":1}".utf8))
    }
}

final class IDTests: XCTestCase {
    func testIDAcceptsOnlyLowercaseCanonicalUUIDs() {
        XCTAssertNotNil(ID("0a1b2c3d-0000-4000-8000-00000000000a"))
        XCTAssertNotNil(ID("00000000-0000-0000-0000-000000000000"))
        for bad in ["0A1B2C3D-0000-4000-8000-00000000000A", "0a1b2c3d00004000800000000000000a", "{0a1b2c3d-0000-4000-8000-00000000000a}",
            "0a1b2c3d-0000-4000-8000-00000000000", "0a1b2c3d-0000-4000-8000-00000000000a0", "0a1b2c3d_0000-4000-8000-00000000000a",
            "0a1b2c3d-0000-4000-8000-00000000000g", "", "é0a1b2c3-0000-4000-8000-00000000000a"]
        {
            XCTAssertNil(ID(bad), bad)
        }
        let random = ID.random()
        XCTAssertEqual(ID(random.string), random)
        XCTAssertEqual(random.uuid.map(ID.init), random)
    }

    func testIDsSortAsStrings() {
        let ids = ["f0000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000", "a0000000-0000-4000-8000-000000000000", "90000000-0000-4000-8000-000000000000"].compactMap(ID.init)
        XCTAssertEqual(ids.sorted().map(\.string), ids.map(\.string).sorted())
    }

    func testUsernameRule() {
        for good in ["abc", "a_b.c-d", "user123", String(repeating: "z", count: 32)] {
            XCTAssertTrue(Limits.isValidUsername(good), good)
        }
        for bad in ["ab", "Abc", "a b", "ab!", "", String(repeating: "z", count: 33), "ünï", "abc\n"] {
            XCTAssertFalse(Limits.isValidUsername(bad), bad)
        }
    }
}

/// A small deterministic generator so that fuzz and random tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
