import Foundation
import ParleyEncoding
import XCTest

final class Base64Tests: XCTestCase {
    /// RFC 4648 §10.
    let vectors: [(String, String)] = [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
    ]

    func testRFC4648Vectors() throws {
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.encode(utf8(plain)), encoded)
            XCTAssertEqual(try Base64.decode(encoded), utf8(plain))
            let unpadded = encoded.replacingOccurrences(of: "=", with: "")
            XCTAssertEqual(Base64.encodeURL(utf8(plain)), unpadded)
            XCTAssertEqual(try Base64.decodeURL(unpadded), utf8(plain))
        }
    }

    func testAlphabets() throws {
        let bytes: [UInt8] = [0xFB, 0xFF, 0xBF, 0xFE]
        XCTAssertEqual(Base64.encode(bytes), "+/+//g==")
        XCTAssertEqual(Base64.encodeURL(bytes), "-_-__g")
        XCTAssertEqual(try Base64.decode("+/+//g=="), bytes)
        XCTAssertEqual(try Base64.decodeURL("-_-__g"), bytes)
        let all = (0..<64).map { UInt8($0 << 2) }  // every 6-bit value appears
        XCTAssertEqual(try Base64.decode(Base64.encode(all)), all)
        XCTAssertEqual(try Base64.decodeURL(Base64.encodeURL(all)), all)
    }

    func testStrictStandardDecoding() {
        let invalid = [
            "Zg", "Zg=", "Zm8", "Zm9vYg", "Zg===", "Zm9vYmFy=", "=", "==", "====", "A===", "=Zg=", "Zg==Zg==",
            "Zm9v YmFy", "Zm9v\nYmFy", " Zm9v", "Zm9v ", "Zm9v\r\n", "Zm9vYmE*", "Zm9vYmE\0", "Zm9vYmF€",
            "-_-__g==", "Zm9v_mFy", "Zh==", "Zm9=", "Zg=a", "Z===", "Z€",
        ]
        for text in invalid {
            XCTAssertThrowsError(try Base64.decode(text), text.debugDescription) { XCTAssertEqual($0 as? Base64.DecodingError, Base64.DecodingError()) }
        }
    }

    func testStrictURLDecoding() {
        let invalid = ["Zg==", "Zm8=", "Z", "Zm9vY", "+/+//g", "Zm9v+mFy", "Zm9v/mFy", "Zh", "Zm9", "Zm9v YmFy", "Zm9v\n", "Zg=", "="]
        for text in invalid {
            XCTAssertThrowsError(try Base64.decodeURL(text), text.debugDescription) { XCTAssertEqual($0 as? Base64.DecodingError, Base64.DecodingError()) }
        }
        XCTAssertEqual(try Base64.decodeURL(""), [])
    }

    func testMatchesFoundationForAllLengths() throws {
        for length in 0...300 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255) }
            let encoded = Base64.encode(bytes)
            XCTAssertEqual(encoded, Data(bytes).base64EncodedString(), "length \(length)")
            XCTAssertEqual(try Base64.decode(encoded), bytes)
            let url = Base64.encodeURL(bytes)
            XCTAssertEqual(url, encoded.replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: ""))
            XCTAssertEqual(try Base64.decodeURL(url), bytes)
        }
    }

    func testPasskeyShape() throws {
        // A passkey or session token: 32 bytes as 43 unpadded base64url characters.
        let token = Base64.encodeURL((0..<32).map { _ in UInt8.random(in: 0...255) })
        XCTAssertEqual(token.count, 43)
        XCTAssertEqual(try Base64.decodeURL(token).count, 32)
        XCTAssertThrowsError(try Base64.decodeURL(token + "="))
    }
}

private func utf8(_ string: String) -> [UInt8] { Array(string.utf8) }
