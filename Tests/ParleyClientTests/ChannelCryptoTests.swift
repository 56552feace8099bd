import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import XCTest

/// Key records and message sealing as a receiver checks them (§6, §7), without a relay.
final class ChannelCryptoTests: XCTestCase {
    let channel = ID.random()
    var alice: (id: ID, key: RSAPrivateKey)!
    var bob: (id: ID, key: RSAPrivateKey)!
    var carol: (id: ID, key: RSAPrivateKey)!
    var chain = MembershipChain(channelID: ID.random())

    override func setUpWithError() throws {
        alice = (ID.random(), try TestKeys.key(0))
        bob = (ID.random(), try TestKeys.key(1))
        carol = (ID.random(), try TestKeys.key(2))
        chain = MembershipChain(channelID: channel)
        var v1 = MembershipChain.firstStatement(owner: alice.id, members: [bob.id], ts: 100)
        v1.sig = try alice.key.signature(for: v1.signedText(channelID: channel))
        let keys = [alice.id: alice.key.publicKey]
        try chain.extend(with: [v1]) { signer, text, sig in keys[signer]?.isValidSignature(sig, for: text) ?? false }
    }

    /// A record as the relay would hand it to `recipient`.
    func record(_ request: Request.Keys, creator: ID, for recipient: ID) -> KeyRecord {
        KeyRecord(
            keyID: request.keyID, channelID: request.channelID, creatorID: creator, previousKeyID: request.previousKeyID,
            membershipVersion: request.membershipVersion, digest: request.digest, sig: request.sig, createdAt: 0,
            expiresAt: 1, encryptedKey: request.encryptedKeys.first { $0.userID == recipient }?.encryptedKey)
    }

    func make(by creator: (id: ID, key: RSAPrivateKey)) throws -> (request: Request.Keys, key: SymmetricKey) {
        try ChannelCrypto.makeKeyRecord(
            channelID: channel, previousKeyID: nil, membershipVersion: 1,
            recipients: [(alice.id, alice.key.publicKey), (bob.id, bob.key.publicKey)], creator: creator.key)
    }

    func assertRefused(_ record: KeyRecord, creatorKey: RSAPublicKey, recipient: RSAPrivateKey, _ fragment: String,
                       file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try ChannelCrypto.checkKeyRecord(record, chain: chain, creatorKey: creatorKey, recipient: recipient)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.kind, .keyRecord, file: file, line: line)
            XCTAssertTrue(error.detail.contains(fragment), error.detail, file: file, line: line)
        }
    }

    func testAKeyRecordEveryMemberAccepts() throws {
        let made = try make(by: alice)
        XCTAssertEqual(Set(made.request.encryptedKeys.map(\.userID)), [alice.id, bob.id])
        XCTAssertEqual(made.request.digest, SHA256.hash(made.key.bytes))
        for member in [alice, bob] {
            let key = try ChannelCrypto.checkKeyRecord(
                record(made.request, creator: alice.id, for: member!.id), chain: chain,
                creatorKey: alice.key.publicKey, recipient: member!.key)
            XCTAssertEqual(key.key, made.key)
            XCTAssertEqual(key.membershipVersion, 1)
        }
    }

    func testForgedKeyRecordsAreRefused() throws {
        let made = try make(by: alice)
        let good = record(made.request, creator: alice.id, for: bob.id)

        var unsigned = good
        unsigned.sig = []
        assertRefused(unsigned, creatorKey: alice.key.publicKey, recipient: bob.key, "signature")

        // Signed by someone else than the named creator.
        assertRefused(good, creatorKey: carol.key.publicKey, recipient: bob.key, "signature")

        // A creator who is not a member of that membership version (signature fine).
        let byCarol = try make(by: carol)
        assertRefused(record(byCarol.request, creator: carol.id, for: bob.id), creatorKey: carol.key.publicKey,
                      recipient: bob.key, "not a member")

        // A membership version that is not verified.
        var future = good
        future.membershipVersion = 2
        assertRefused(future, creatorKey: alice.key.publicKey, recipient: bob.key, "not verified")

        // A wrapped key that is not the signed one (a relay handing bob a different key).
        var swapped = good
        swapped.encryptedKey = try bob.key.publicKey.wrap(SymmetricKey.generate().bytes)
        assertRefused(swapped, creatorKey: alice.key.publicKey, recipient: bob.key, "digest")

        // Another channel's chain.
        var elsewhere = good
        elsewhere.channelID = ID.random()
        assertRefused(elsewhere, creatorKey: alice.key.publicKey, recipient: bob.key, "another channel")

        // No copy for this user.
        assertRefused(record(made.request, creator: alice.id, for: carol.id), creatorKey: alice.key.publicKey,
                      recipient: carol.key, "no copy")
    }

    func testMessagesVerifyOrAreUnverifiable() throws {
        let key = try SymmetricKey.generate()
        let box = try ChannelCrypto.seal(text: "hello: world", channelID: channel, ts: 1_700_000_000, key: key, signer: alice.key)
        let stored = MessageRecord(
            channelID: channel, seq: 1, senderID: alice.id, keyID: ID.random(), iv: box.iv, ciphertext: box.ciphertext,
            ts: 1_700_000_000, receivedAt: 0)
        XCTAssertEqual(ChannelCrypto.open(stored, key: key, senderKey: alice.key.publicKey), .text("hello: world"))

        // Claimed by another sender: the signature is checked with that sender's key.
        guard case .unverifiable = ChannelCrypto.open(stored, key: key, senderKey: bob.key.publicKey) else {
            return XCTFail("a message must not verify under another sender's key")
        }
        // The relay changing `ts` or the channel breaks the signature.
        var retimed = stored
        retimed.ts += 1
        guard case .unverifiable = ChannelCrypto.open(retimed, key: key, senderKey: alice.key.publicKey) else {
            return XCTFail("ts is signed")
        }
        // Wrong key, tampered ciphertext.
        guard case .unverifiable = ChannelCrypto.open(stored, key: try SymmetricKey.generate(), senderKey: alice.key.publicKey) else {
            return XCTFail("wrong key")
        }
        var tampered = stored
        tampered.ciphertext[0] ^= 1
        guard case .unverifiable = ChannelCrypto.open(tampered, key: key, senderKey: alice.key.publicKey) else {
            return XCTFail("tampered")
        }
        // A well-encrypted plaintext that is not {"body","sig"}.
        let junk = try AESGCM.seal(Array("{\"text\":\"hi\"}".utf8), using: key)
        let odd = MessageRecord(channelID: channel, seq: 2, senderID: alice.id, keyID: ID.random(), iv: junk.iv,
                                ciphertext: junk.ciphertext, ts: 1, receivedAt: 0)
        guard case .unverifiable = ChannelCrypto.open(odd, key: key, senderKey: alice.key.publicKey) else {
            return XCTFail("format")
        }
    }
}
