import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import XCTest

/// Key pins, the replay guard, the backoff policy: pure parts with their own rules.
final class TrustStoreTests: XCTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-client-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func testPinsOnFirstSightAndRefusesAChangedKey() throws {
        let user = ID.random()
        let first = try TestKeys.key(0).publicKey.spkiDER
        let second = try TestKeys.key(1).publicKey.spkiDER
        var pins = KeyPins()
        XCTAssertEqual(pins.check(userID: user, publicKey: first), .pinned)
        XCTAssertEqual(pins.check(userID: user, publicKey: first), .matches)
        let fingerprint = Base64.encode(SHA256.hash(first))
        XCTAssertEqual(pins.pin(for: user)?.fingerprint, fingerprint)
        XCTAssertEqual(pins.check(userID: user, publicKey: second),
                       .changed(pinned: fingerprint, presented: Base64.encode(SHA256.hash(second))))
        // The pin stays what it was.
        XCTAssertEqual(pins.pin(for: user)?.fingerprint, fingerprint)
        // Another user may have that key pinned independently.
        XCTAssertEqual(pins.check(userID: ID.random(), publicKey: second), .pinned)
    }

    func testPinStoreFileIs0600AndSurvivesARestart() throws {
        let file = folder.appendingPathComponent("me.pins.json")
        let user = ID.random()
        let spki = try TestKeys.key(2).publicKey.spkiDER
        let store = try KeyPinStore(file: file)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file.path), "nothing written before a pin")
        XCTAssertEqual(try store.check(userID: user, publicKey: spki), .pinned)
        XCTAssertEqual(try mode(of: file), 0o600)

        let reopened = try KeyPinStore(file: file)
        XCTAssertEqual(reopened.pin(for: user)?.fingerprint, KeyPins.fingerprint(of: spki))
        guard case .changed = try reopened.check(userID: user, publicKey: try TestKeys.key(3).publicKey.spkiDER) else {
            return XCTFail("a changed key must be refused after a restart")
        }
        XCTAssertEqual(try leftoverTemporaryFiles(), [])

        // Pins others could edit are not trusted.
        XCTAssertEqual(chmod(file.path, 0o666), 0)
        XCTAssertThrowsError(try KeyPinStore(file: file))
    }

    func testPinFileWithATamperedEntryIsRefused() throws {
        let file = folder.appendingPathComponent("tampered.pins.json")
        var pins = KeyPins()
        _ = pins.check(userID: ID.random(), publicKey: try TestKeys.key(0).publicKey.spkiDER)
        var text = String(decoding: try pins.encoded(), as: UTF8.self)
        let fingerprint = try XCTUnwrap(pins.pins.values.first?.fingerprint)
        XCTAssertTrue(text.contains(fingerprint))
        text = text.replacingOccurrences(of: fingerprint, with: KeyPins.fingerprint(of: [1, 2, 3]))
        try SecureFile.write(Array(text.utf8), to: file)
        XCTAssertThrowsError(try KeyPinStore(file: file))
    }

    func testReplayGuard() {
        var guardian = ReplayGuard(capacity: 3)
        let key = ID.random()
        let iv: [UInt8] = Array(repeating: 1, count: 12)
        XCTAssertEqual(guardian.admit(keyID: key, iv: iv, seq: 5), .fresh)
        // History read again: same seq, not a replay.
        XCTAssertEqual(guardian.admit(keyID: key, iv: iv, seq: 5), .again)
        // The same pair under another seq: a replay.
        XCTAssertEqual(guardian.admit(keyID: key, iv: iv, seq: 9), .replay(firstSeq: 5))
        // The same iv under another key is another pair.
        XCTAssertEqual(guardian.admit(keyID: ID.random(), iv: iv, seq: 9), .fresh)
        // Bounded: the oldest pair is forgotten first.
        for seq in 10..<13 { _ = guardian.admit(keyID: key, iv: Array(repeating: UInt8(seq), count: 12), seq: seq) }
        XCTAssertEqual(guardian.count, 3)
        XCTAssertEqual(guardian.admit(keyID: key, iv: iv, seq: 9), .fresh)
    }

    func testBackoffGrowsIsBoundedAndJittered() {
        var policy = ReconnectPolicy()
        policy.initialDelay = 0.1
        policy.maxDelay = 2
        policy.multiplier = 2
        policy.jitter = 0
        XCTAssertEqual(policy.delay(attempt: 0, random: 0.5), 0.1, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(attempt: 3, random: 0.5), 0.8, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(attempt: 50, random: 0.5), 2, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(attempt: 10_000, random: 0.5), 2, accuracy: 1e-9)
        policy.jitter = 0.5
        XCTAssertEqual(policy.delay(attempt: 3, random: 0), 0.8, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(attempt: 3, random: 1), 0.4, accuracy: 1e-9)
        for _ in 0..<100 {
            let delay = policy.delay(attempt: Int.random(in: 0...100), random: Double.random(in: 0...1))
            XCTAssertTrue((0...2).contains(delay))
        }
    }

    private func mode(of url: URL) throws -> mode_t {
        var info = stat()
        XCTAssertEqual(stat(url.path, &info), 0)
        return info.st_mode & 0o7777
    }

    private func leftoverTemporaryFiles() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".tmp") }
    }
}

/// The identity file: contents, mode 0600 from creation, atomic replacement, passphrases.
final class IdentityFileTests: XCTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-identity-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private func identity() throws -> Identity {
        Identity(userID: ID.random(), username: "alice", session: "c2Vzc2lvbi10b2tlbi1zZWNyZXQtdmFsdWUtMDEyMzQ1Ng",
                 passkey: "cGFzc2tleS1zZWNyZXQtdmFsdWUtMDEyMzQ1Njc4OWFi", privateKey: try TestKeys.key(0))
    }

    private func mode(of url: URL) -> mode_t {
        var info = stat()
        XCTAssertEqual(stat(url.path, &info), 0)
        return info.st_mode & 0o7777
    }

    func testRoundTripWithMode0600EvenUnderAPermissiveUmask() throws {
        let file = folder.appendingPathComponent("alice.json")
        let original = try identity()
        let previous = umask(0)   // the file must still come out 0600
        defer { umask(previous) }
        try IdentityFile.write(original, to: file)
        XCTAssertEqual(mode(of: file), 0o600)
        let read = try IdentityFile.read(from: file)
        XCTAssertEqual(read.userID, original.userID)
        XCTAssertEqual(read.username, original.username)
        XCTAssertEqual(read.session, original.session)
        XCTAssertEqual(read.passkey, original.passkey)
        XCTAssertEqual(read.privateKey.publicKey, original.privateKey.publicKey)

        let text = String(decoding: try Data(contentsOf: file), as: UTF8.self)
        XCTAssertTrue(text.contains("-----BEGIN PRIVATE KEY-----"))
        XCTAssertTrue(text.contains("\"user_id\""))

        // Replacing keeps 0600 and leaves no temporary file behind.
        var updated = original
        updated.session = "bmV3LXNlc3Npb24tdG9rZW4tc2VjcmV0LXZhbHVlLTAxMjM"
        try IdentityFile.write(updated, to: file)
        XCTAssertEqual(mode(of: file), 0o600)
        XCTAssertEqual(try IdentityFile.read(from: file).session, updated.session)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["alice.json"])
    }

    func testPassphraseProtectedKey() throws {
        let file = folder.appendingPathComponent("bob.json")
        try IdentityFile.write(try identity(), to: file, passphrase: "correct horse")
        let text = String(decoding: try Data(contentsOf: file), as: UTF8.self)
        XCTAssertTrue(text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        XCTAssertFalse(text.contains("-----BEGIN PRIVATE KEY-----"))
        XCTAssertEqual(try IdentityFile.read(from: file, passphrase: "correct horse").privateKey.publicKey,
                       try TestKeys.key(0).publicKey)
        XCTAssertThrowsError(try IdentityFile.read(from: file, passphrase: "wrong")) { error in
            guard case ClientError.crypto = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try IdentityFile.read(from: file))
    }

    func testRefusesAFileOthersCanRead() throws {
        let file = folder.appendingPathComponent("open.json")
        try IdentityFile.write(try identity(), to: file)
        XCTAssertEqual(chmod(file.path, 0o644), 0)
        XCTAssertThrowsError(try IdentityFile.read(from: file)) { error in
            guard case ClientError.file = error else { return XCTFail("\(error)") }
        }
    }

    func testDescriptionsCarryNoSecrets() throws {
        let identity = try identity()
        for text in [identity.description, String(describing: identity), "\(identity)"] {
            XCTAssertFalse(text.contains(identity.session))
            XCTAssertFalse(text.contains(identity.passkey ?? "-"))
            XCTAssertFalse(text.contains("PRIVATE KEY"))
        }
        XCTAssertEqual(IdentityFile.pinsURL(for: folder.appendingPathComponent("a.json")).lastPathComponent, "a.json.pins.json")
    }
}
