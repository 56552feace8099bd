import Foundation
import ParleyCrypto
import XCTest

/// Interoperability with an independent implementation, Python `cryptography`:
/// Python → Swift through the committed fixture (Tests/Interop/make_fixtures.py), and
/// Swift → Python by running Tests/Interop/check_swift_output.py on fresh Swift output.
final class InteropTests: XCTestCase {
    // MARK: Python → Swift

    func testImportsPythonKeys() throws {
        let fixture = try InteropFixture.load()
        let plain = try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8Pem)
        XCTAssertEqual(plain.publicKey.spkiDER, try Base64.decode(fixture.rsa2048.spkiDerB64))
        XCTAssertEqual(plain.publicKey.modulusBits, fixture.rsa2048.modulusBits)
        XCTAssertEqual(plain.publicKey.fingerprintBase64, fixture.rsa2048.fingerprintB64)

        let encrypted = try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8PemEncrypted,
                                          passphrase: fixture.rsa2048.passphrase)
        XCTAssertEqual(encrypted.publicKey, plain.publicKey)
        assertThrows(try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8PemEncrypted, passphrase: "incorrect horse"),
                     .wrongPassphrase)
        assertThrows(try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8PemEncrypted), .passphraseRequired)

        let publicKey = try RSAPublicKey(spkiDER: Base64.decode(fixture.rsa2048.spkiDerB64))
        XCTAssertEqual(publicKey.fingerprint, try Base64.decode(fixture.rsa2048.fingerprintB64))
    }

    func testUnwrapsPythonOAEP() throws {
        let fixture = try InteropFixture.load()
        let key = try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8Pem)
        XCTAssertGreaterThanOrEqual(fixture.oaep.count, 4)
        for oaep in fixture.oaep {
            XCTAssertEqual(try key.unwrap(Base64.decode(oaep.ciphertextB64)), try Base64.decode(oaep.plaintextB64), oaep.name)
        }
    }

    func testVerifiesPythonPSS() throws {
        let fixture = try InteropFixture.load()
        let publicKey = try RSAPublicKey(spkiDER: Base64.decode(fixture.rsa2048.spkiDerB64))
        XCTAssertGreaterThanOrEqual(fixture.pss.count, 5)
        for pss in fixture.pss {
            let message = try Base64.decode(pss.messageB64)
            let signature = try Base64.decode(pss.signatureB64)
            XCTAssertTrue(publicKey.isValidSignature(signature, for: message), pss.name)
            XCTAssertFalse(publicKey.isValidSignature(signature, for: message + [0x0A]), pss.name)
        }
    }

    func testOpensPythonAESGCM() throws {
        let fixture = try InteropFixture.load()
        XCTAssertGreaterThanOrEqual(fixture.gcm.count, 4)
        for gcm in fixture.gcm {
            let key = try SymmetricKey(bytes: Base64.decode(gcm.keyB64))
            let box = try AESGCM.SealedBox(iv: Base64.decode(gcm.ivB64), ciphertext: Base64.decode(gcm.ciphertextB64))
            let plaintext = try Base64.decode(gcm.plaintextB64)
            XCTAssertEqual(try AESGCM.open(box, using: key), plaintext, gcm.name)
            // Same key, IV and plaintext must give the same bytes as Python.
            XCTAssertEqual(try AESGCM.seal(plaintext, using: key, iv: box.iv), box, gcm.name)
        }
    }

    func testDecryptsAndVerifiesPythonMessage() throws {
        let fixture = try InteropFixture.load()
        let sender = try RSAPublicKey(spkiDER: Base64.decode(fixture.rsa2048.spkiDerB64))
        let message = fixture.message
        let box = try AESGCM.SealedBox(iv: Base64.decode(message.ivB64), ciphertext: Base64.decode(message.ciphertextB64))
        let plaintext = try AESGCM.open(box, using: SymmetricKey(bytes: Base64.decode(message.keyB64)))

        struct Inner: Decodable { let body: String; let sig: String }
        let inner = try JSONDecoder().decode(Inner.self, from: Data(plaintext))
        XCTAssertEqual(inner.body, message.body)
        XCTAssertTrue(inner.body.contains(":") && inner.body.unicodeScalars.contains { !$0.isASCII })

        let signature = try Base64.decode(inner.sig)
        let signedText = utf8("\(inner.body):\(message.channelId):\(message.ts)")
        XCTAssertTrue(sender.isValidSignature(signature, for: signedText))
        XCTAssertFalse(sender.isValidSignature(signature, for: utf8("\(inner.body):\(message.channelId):\(message.ts + 1)")))
    }

    func testAnswersPythonChallenge() throws {
        let fixture = try InteropFixture.load()
        let key = try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8Pem)
        let secret = try key.unwrap(Base64.decode(fixture.challenge.ciphertextB64))
        XCTAssertEqual(secret.count, 32)
        XCTAssertEqual(try ChallengeAnswer.compute(secret: secret), fixture.challenge.answer)
    }

    func testKeyRecordDigest() throws {
        let fixture = try InteropFixture.load()
        let key = try SymmetricKey(bytes: Base64.decode(fixture.keyRecord.keyB64))
        XCTAssertEqual(KeyDigest.of(key), fixture.keyRecord.digest)
        // The record's key is the channel key that the first OAEP fixture wraps.
        let owner = try RSAPrivateKey(pkcs8PEM: fixture.rsa2048.privatePkcs8Pem)
        let wrapped = try XCTUnwrap(fixture.oaep.first { $0.name.hasPrefix("channel key") })
        XCTAssertEqual(KeyDigest.of(try SymmetricKey(bytes: owner.unwrap(Base64.decode(wrapped.ciphertextB64)))),
                       fixture.keyRecord.digest)
    }

    func testPython3072And4096BitKeys() throws {
        let fixture = try InteropFixture.load()
        XCTAssertEqual(fixture.otherSizes.map(\.bits), [3072, 4096])
        for other in fixture.otherSizes {
            let publicKey = try RSAPublicKey(spkiDER: Base64.decode(other.spkiDerB64))
            XCTAssertEqual(publicKey.modulusBits, other.bits)
            XCTAssertEqual(publicKey.modulusBytes, other.bits / 8)
            XCTAssertEqual(publicKey.fingerprintBase64, other.fingerprintB64)
            let message = try Base64.decode(other.messageB64)
            let signature = try Base64.decode(other.signatureB64)
            XCTAssertTrue(publicKey.isValidSignature(signature, for: message), "\(other.bits)")
            XCTAssertFalse(publicKey.isValidSignature(signature, for: message + [0]), "\(other.bits)")
            XCTAssertEqual(try publicKey.wrap(SecureRandom.bytes(count: 32)).count, other.bits / 8)
        }
    }

    // MARK: Swift → Python

    func testPythonAcceptsSwiftOutput() throws {
        let fixture = try InteropFixture.load()
        let pythonKey = try RSAPublicKey(spkiDER: Base64.decode(fixture.rsa2048.spkiDerB64))
        let swiftKey = try RSAPrivateKey(generating: .bits2048)
        let passphrase = "swift passphrase ✓"

        let plaintexts: [(String, [UInt8])] = [
            ("channel key", try SecureRandom.bytes(count: 32)),
            ("empty", []),
            ("text", utf8("parley ✓")),
            ("maximum length", [UInt8](repeating: 0xC3, count: 190)),
        ]
        func oaepCases(_ publicKey: RSAPublicKey) throws -> [SwiftOutput.Pair] {
            try plaintexts.map { name, plaintext in
                SwiftOutput.Pair(name: name, plaintextB64: Base64.encode(plaintext),
                                 ciphertextB64: Base64.encode(try publicKey.wrap(plaintext)))
            }
        }
        let messages: [(String, [UInt8])] = [
            ("empty", []), ("text", utf8("hello, python")), ("utf-8", utf8("Grüße, 世界 🙂")),
            ("binary", (0..<1024).map { UInt8(($0 * 13 + 5) % 256) }),
        ]
        let gcmInputs: [(String, [UInt8])] = [
            ("empty", []), ("text", utf8("Grüße: 👋")), ("1000 bytes", (0..<1000).map { UInt8($0 % 256) }),
        ]

        let channelID = "6a1f0c2e-4b3d-4e5f-8a9b-0c1d2e3f4a5b"
        let ts = 1_735_689_600
        let body = "Swift sagt: grüß dich 👋 — 12:00 ok?"
        let signature = try swiftKey.signature(for: utf8("\(body):\(channelID):\(ts)"))
        let messageKey = try SymmetricKey.generate()
        let inner = try JSONSerialization.data(withJSONObject: ["body": body, "sig": Base64.encode(signature)])
        let messageBox = try AESGCM.seal(Array(inner), using: messageKey)
        let secret = try SecureRandom.bytes(count: 32)
        let recordKey = try SymmetricKey.generate()

        let output = SwiftOutput(
            spkiDerB64: Base64.encode(swiftKey.publicKey.spkiDER),
            fingerprintB64: swiftKey.publicKey.fingerprintBase64,
            modulusBits: swiftKey.publicKey.modulusBits,
            privatePkcs8Pem: try swiftKey.pkcs8PEM(),
            privatePkcs8PemEncrypted: try swiftKey.pkcs8PEM(passphrase: passphrase),
            passphrase: passphrase,
            oaepToPython: try oaepCases(pythonKey),
            oaepToSwift: try oaepCases(swiftKey.publicKey),
            pss: try messages.map { name, message in
                SwiftOutput.Signature(name: name, messageB64: Base64.encode(message),
                                      signatureB64: Base64.encode(try swiftKey.signature(for: message)))
            },
            gcm: try gcmInputs.map { name, plaintext in
                let key = try SymmetricKey.generate()
                let box = try AESGCM.seal(plaintext, using: key)
                return SwiftOutput.Box(name: name, keyB64: Base64.encode(key.bytes), ivB64: Base64.encode(box.iv),
                                       plaintextB64: Base64.encode(plaintext), ciphertextB64: Base64.encode(box.ciphertext))
            },
            message: SwiftOutput.Message(channelId: channelID, ts: ts, body: body,
                                         keyB64: Base64.encode(messageKey.bytes), ivB64: Base64.encode(messageBox.iv),
                                         ciphertextB64: Base64.encode(messageBox.ciphertext)),
            challenge: SwiftOutput.Challenge(secretB64: Base64.encode(secret),
                                             answer: try ChallengeAnswer.compute(secret: secret)),
            keyRecord: SwiftOutput.KeyRecord(keyB64: Base64.encode(recordKey.bytes), digest: KeyDigest.of(recordKey)),
            base64url: try [0, 1, 2, 3, 32, 100].map { count in
                let bytes = try SecureRandom.bytes(count: count)
                return SwiftOutput.URLCase(bytesB64: Base64.encode(bytes), encoded: Base64.encodeURL(bytes))
            }
        )

        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let file = FileManager.default.temporaryDirectory
            .appendingPathComponent("parley-swift-output-\(UUID().uuidString).json")
        try encoder.encode(output).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }

        let script = repositoryRoot.appendingPathComponent("Tests/Interop/check_swift_output.py").path
        let result = try runPython([script, file.path])
        let hint: String
        switch result.status {
        case 127: hint = "python3 was not found; install it (scripts/setup does)."
        case 2: hint = "the checker could not run; is the Python 'cryptography' package installed (scripts/setup)?"
        default: hint = ""
        }
        XCTAssertEqual(result.status, 0, "check_swift_output.py failed. \(hint)\nstderr:\n\(result.stderr)\nstdout:\n\(result.stdout)")
        XCTAssertTrue(result.stdout.hasPrefix("ok:"), result.stdout)
    }

    /// Runs `python3` with the arguments; output goes through files so that a chatty child cannot block on a full pipe.
    private func runPython(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let directory = FileManager.default.temporaryDirectory
        let stdoutURL = directory.appendingPathComponent("parley-python-\(UUID().uuidString).out")
        let stderrURL = directory.appendingPathComponent("parley-python-\(UUID().uuidString).err")
        guard FileManager.default.createFile(atPath: stdoutURL.path, contents: nil),
              FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        else { throw CocoaError(.fileWriteUnknown) }
        defer {
            try? FileManager.default.removeItem(at: stdoutURL)
            try? FileManager.default.removeItem(at: stderrURL)
        }
        let stdoutHandle = try FileHandle(forWritingTo: stdoutURL)
        let stderrHandle = try FileHandle(forWritingTo: stderrURL)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        process.currentDirectoryURL = repositoryRoot
        process.standardOutput = stdoutHandle
        process.standardError = stderrHandle
        try process.run()
        process.waitUntilExit()
        try stdoutHandle.close()
        try stderrHandle.close()
        return (
            process.terminationStatus,
            String(decoding: try Data(contentsOf: stdoutURL), as: UTF8.self),
            String(decoding: try Data(contentsOf: stderrURL), as: UTF8.self)
        )
    }
}

/// What check_swift_output.py reads (snake_case keys).
private struct SwiftOutput: Encodable {
    struct Pair: Encodable { let name, plaintextB64, ciphertextB64: String }
    struct Signature: Encodable { let name, messageB64, signatureB64: String }
    struct Box: Encodable { let name, keyB64, ivB64, plaintextB64, ciphertextB64: String }
    struct Message: Encodable {
        let channelId: String
        let ts: Int
        let body, keyB64, ivB64, ciphertextB64: String
    }
    struct Challenge: Encodable { let secretB64, answer: String }
    struct KeyRecord: Encodable { let keyB64, digest: String }
    struct URLCase: Encodable { let bytesB64, encoded: String }

    let spkiDerB64: String
    let fingerprintB64: String
    let modulusBits: Int
    let privatePkcs8Pem: String
    let privatePkcs8PemEncrypted: String
    let passphrase: String
    let oaepToPython: [Pair]
    let oaepToSwift: [Pair]
    let pss: [Signature]
    let gcm: [Box]
    let message: Message
    let challenge: Challenge
    let keyRecord: KeyRecord
    let base64url: [URLCase]
}
