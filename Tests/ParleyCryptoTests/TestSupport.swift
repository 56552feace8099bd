import Foundation
import ParleyCrypto
import XCTest

/// The repository root, found from this file's path (Tests/ParleyCryptoTests/TestSupport.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()
    .deletingLastPathComponent()
    .deletingLastPathComponent()

/// Keys are slow to generate, so the tests share a few; generated once, on first use.
enum SharedKeys {
    static let first = Result { try RSAPrivateKey(generating: .bits2048) }
    static let second = Result { try RSAPrivateKey(generating: .bits2048) }
}

func hex(_ string: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = string.startIndex
    while index < string.endIndex {
        let next = string.index(index, offsetBy: 2)
        bytes.append(UInt8(string[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

func utf8(_ string: String) -> [UInt8] { Array(string.utf8) }

extension CryptoError {
    /// The case name without associated values, to compare against fixtures.
    var caseName: String {
        switch self {
        case .invalidKey: return "invalidKey"
        case .notRSA: return "notRSA"
        case .unsupportedKeySize: return "unsupportedKeySize"
        case .unsupportedExponent: return "unsupportedExponent"
        case .wrongPassphrase: return "wrongPassphrase"
        case .passphraseRequired: return "passphraseRequired"
        case .invalidLength: return "invalidLength"
        case .decryptionFailed: return "decryptionFailed"
        case .authenticationFailed: return "authenticationFailed"
        case .openssl: return "openssl"
        }
    }
}

/// Asserts that `expression` throws a `CryptoError` with the given case name.
func assertThrows<T>(
    _ expression: @autoclosure () throws -> T,
    _ expectedCase: String,
    _ message: String = "",
    file: StaticString = #filePath,
    line: UInt = #line
) {
    XCTAssertThrowsError(try expression(), message, file: file, line: line) { error in
        guard let error = error as? CryptoError else {
            return XCTFail("not a CryptoError: \(error) \(message)", file: file, line: line)
        }
        XCTAssertEqual(error.caseName, expectedCase, "\(error) \(message)", file: file, line: line)
    }
}

/// Asserts that `expression` throws exactly `expected`.
func assertThrows<T>(
    _ expression: @autoclosure () throws -> T,
    _ expected: CryptoError,
    _ message: String = "",
    file: StaticString = #filePath,
    line: UInt = #line
) {
    XCTAssertThrowsError(try expression(), message, file: file, line: line) { error in
        XCTAssertEqual(error as? CryptoError, expected, message, file: file, line: line)
    }
}

// MARK: - The Python fixture (Tests/Interop/Fixtures/interop.json, made by make_fixtures.py)

struct InteropFixture: Decodable {
    struct KeyPair: Decodable {
        let modulusBits: Int
        let privatePkcs8Pem: String
        let privatePkcs8PemEncrypted: String
        let passphrase: String
        let spkiDerB64: String
        let fingerprintB64: String
    }
    struct OAEPCase: Decodable { let name, plaintextB64, ciphertextB64: String }
    struct PSSCase: Decodable { let name, messageB64, signatureB64: String }
    struct GCMCase: Decodable { let name, keyB64, ivB64, plaintextB64, ciphertextB64: String }
    struct Message: Decodable {
        let channelId: String
        let ts: Int
        let body, keyB64, ivB64, ciphertextB64: String
    }
    struct Challenge: Decodable { let ciphertextB64, answer: String }
    struct KeyRecord: Decodable { let keyB64, digest: String }
    struct OtherSize: Decodable {
        let bits: Int
        let spkiDerB64, fingerprintB64, messageB64, signatureB64: String
    }
    struct InvalidKey: Decodable { let name, error, spkiDerB64: String }
    struct InvalidPrivateKey: Decodable { let name, error, pem: String }

    let rsa2048: KeyPair
    let oaep: [OAEPCase]
    let pss: [PSSCase]
    let gcm: [GCMCase]
    let message: Message
    let challenge: Challenge
    let keyRecord: KeyRecord
    let otherSizes: [OtherSize]
    let invalidKeys: [InvalidKey]
    let invalidPrivateKeys: [InvalidPrivateKey]

    static let url = repositoryRoot.appendingPathComponent("Tests/Interop/Fixtures/interop.json")

    static func load() throws -> InteropFixture {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(InteropFixture.self, from: Data(contentsOf: url))
    }
}
