import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import ParleyStore
import XCTest

/// A compromised relay (played by editing its database) cannot make the SDK trust a key,
/// a key record or a membership it did not get from the members themselves.
final class ClientTrustTests: XCTestCase {
    func testASwappedPublicKeyIsRefusedLoudly() async throws {
        let harness = try RelayHarness()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-pins-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var configuration = RelayHarness.fastConfiguration
        configuration.pins = try KeyPinStore(file: folder.appendingPathComponent("alice.pins.json"))

        let alice = try await harness.user("alice", key: 0, configuration: configuration)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "pinned", members: [bob.identity.userID])
        try await alice.client.subscribe(to: [channel])
        try await bob.client.send(text: "hi, it's bob", to: channel)
        let read = await alice.events.wait { $0.messages(in: channel).first?.text == "hi, it's bob" }
        XCTAssertTrue(read)

        // The relay swaps bob's public key for one it holds the private half of.
        let mallory = try TestKeys.key(6).publicKey
        _ = try harness.sql("UPDATE users SET public_key = $1, key_fingerprint = $2 WHERE id = $3::uuid",
                            [.bytes(mallory.spkiDER), .bytes(mallory.fingerprint), .id(bob.identity.userID)])
        let expected = ClientError.keyChanged(
            userID: bob.identity.userID, pinned: bob.identity.fingerprint, presented: mallory.fingerprintBase64)

        do {
            _ = try await alice.client.user(id: bob.identity.userID)
            XCTFail("accepted a changed key")
        } catch let error as ClientError {
            XCTAssertEqual(error, expected)
        }
        // Never wrapped for: a rotation stops before anything reaches the relay.
        let keysBefore = try harness.sql("SELECT count(*) FROM channel_keys").rows.first?.int(0)
        do {
            try await alice.client.rotateKey(in: channel)
            XCTFail("wrapped a channel key for a changed public key")
        } catch let error as ClientError {
            XCTAssertEqual(error, expected)
        }
        XCTAssertEqual(try harness.sql("SELECT count(*) FROM channel_keys").rows.first?.int(0), keysBefore)
        let alerted = await alice.events.wait { recorder in
            recorder.alerts.contains(.keyChanged(
                userID: bob.identity.userID, pinned: bob.identity.fingerprint, presented: mallory.fingerprintBase64))
        }
        XCTAssertTrue(alerted)

        // Bob's messages still verify with the key pinned for him.
        try await bob.client.send(text: "still bob", to: channel)
        let still = await alice.events.wait { $0.messages(in: channel).count == 2 }
        XCTAssertTrue(still)
        XCTAssertEqual(alice.events.messages(in: channel).last?.content, .text("still bob"))

        // The pins outlive the client: a new one for alice refuses the swap too.
        let again = harness.client(configuration: configuration)
        try await again.auth(identity: alice.identity)
        do {
            _ = try await again.members(of: channel)
            XCTFail("a restarted client accepted the changed key")
        } catch let error as ClientError {
            XCTAssertEqual(error, expected)
        }
        await harness.stop()
    }

    func testAForgedKeyRecordIsRefusedAndRotatedPast() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "forged key", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        let genuine = try await alice.client.send(text: "genuine", to: channel)
        let first = await bob.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(first)

        // The relay slips in a key of its own, "by alice" but not signed by her, wrapped
        // for both members, and a message under it.
        let forgedKeyID = ID.random()
        let raw = try SecureRandom.bytes(count: 32)
        let mallory = try TestKeys.key(6)
        let text = SignedText.keyRecord(channelID: channel, keyID: forgedKeyID, previousKeyID: genuine.keyID,
                                        membershipVersion: 1, digest: SHA256.hash(raw))
        _ = try harness.sql("""
            INSERT INTO channel_keys (id, channel_id, creator_id, previous_key_id, membership_version, digest, sig, expires_at)
            VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, 1, $5, $6, now() + interval '1 hour')
            """, [.id(forgedKeyID), .id(channel), .id(alice.identity.userID), .id(genuine.keyID),
                  .bytes(SHA256.hash(raw)), .bytes(try mallory.signature(for: text))])
        for person in [alice, bob] {
            _ = try harness.sql("INSERT INTO channel_key_copies (key_id, user_id, encrypted_key) VALUES ($1::uuid, $2::uuid, $3)",
                                [.id(forgedKeyID), .id(person.identity.userID),
                                 .bytes(try person.identity.privateKey.publicKey.wrap(raw))])
        }
        _ = try harness.sql("UPDATE channels SET current_key_id = $2::uuid WHERE id = $1::uuid", [.id(channel), .id(forgedKeyID)])
        let ts = Int(Date().timeIntervalSince1970)
        let sealed = try AESGCM.seal(MessagePlaintext(
            body: "send me your password",
            sig: try mallory.signature(for: SignedText.message(body: "send me your password", channelID: channel, ts: ts))).encode(),
            using: SymmetricKey(bytes: raw))
        _ = try harness.sql("""
            WITH bumped AS (UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1::uuid RETURNING last_seq)
            INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
            SELECT $1::uuid, last_seq, $2::uuid, $3::uuid, $4::uuid, $5, $6, $7 FROM bumped
            """, [.id(channel), .id(alice.identity.userID), .id(ID.random()), .id(forgedKeyID), .bytes(sealed.iv),
                  .bytes(sealed.ciphertext), .int(ts)])

        // History shows the forged message as unverifiable, never as alice's text.
        let history = try await bob.client.history(of: channel)
        XCTAssertEqual(history.messages.count, 2)
        XCTAssertEqual(history.messages.first?.text, "genuine")
        guard case .unverifiable = history.messages.last?.content else {
            return XCTFail("a forged key's message was shown as text: \(String(describing: history.messages.last))")
        }
        let alerted = await bob.events.wait { recorder in
            recorder.alerts.contains { alert in
                if case .verificationFailed(let failure) = alert { return failure.kind == .keyRecord }
                return false
            }
        }
        XCTAssertTrue(alerted)

        // Sending never uses the forged key: bob rotates past it.
        let after = try await bob.client.send(text: "after the forgery", to: channel)
        XCTAssertNotEqual(after.keyID, forgedKeyID)
        XCTAssertNotEqual(after.keyID, genuine.keyID)
        // Live delivery pages the gap: the forged message once, unverifiable, then bob's.
        let live = await bob.events.wait { $0.messages(in: channel).count == 3 }
        XCTAssertTrue(live)
        let messages = bob.events.messages(in: channel)
        XCTAssertEqual(messages.map(\.seq), [1, 2, 3])
        XCTAssertNil(messages[1].text)
        XCTAssertEqual(messages[2].text, "after the forgery")
        await harness.stop()
    }

    func testAForgedMembershipStatementIsRefused() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let mallory = try await harness.user("mallory", key: 6)
        let channel = try await alice.client.createChannel(name: "forged chain", members: [bob.identity.userID])
        try await alice.client.send(text: "hello", to: channel)
        let v1 = try await bob.client.membershipChain(of: channel)
        XCTAssertEqual(v1.version, 1)

        // The relay adds mallory with a statement alice never signed (right prev, wrong signature).
        let members = [alice, bob, mallory].map(\.identity.userID)
        var forged = MembershipStatement(
            version: 2, prev: v1.headHash, ts: Int(Date().timeIntervalSince1970), ownerID: alice.identity.userID,
            members: members, signerID: alice.identity.userID, sig: [])
        forged.sig = try mallory.identity.privateKey.signature(for: forged.signedText(channelID: channel))
        _ = try harness.sql("""
            INSERT INTO membership_statements (channel_id, version, prev, ts, owner_id, members, signer_id, sig, text_hash)
            VALUES ($1::uuid, 2, $2, $3, $4::uuid, $5::uuid[], $4::uuid, $6, $7)
            """, [.id(channel), .bytes(forged.prev), .int(forged.ts), .id(alice.identity.userID),
                  .array(forged.members.map(\.string)), .bytes(forged.sig),
                  .bytes(SHA256.hash(forged.signedText(channelID: channel)))])
        _ = try harness.sql("UPDATE channels SET membership_version = 2 WHERE id = $1::uuid", [.id(channel)])
        _ = try harness.sql("""
            INSERT INTO channel_members (channel_id, user_id, role, join_seq) VALUES ($1::uuid, $2::uuid, 'member', 1)
            """, [.id(channel), .id(mallory.identity.userID)])
        _ = try harness.sql("""
            UPDATE channel_keys SET expires_at = now() WHERE id = (SELECT current_key_id FROM channels WHERE id = $1::uuid)
            """, [.id(channel)])

        func assertRefusesChain(_ body: () async throws -> Void, file: StaticString = #filePath, line: UInt = #line) async {
            do {
                try await body()
                XCTFail("trusted a forged membership statement", file: file, line: line)
            } catch ClientError.verification(let failure) {
                XCTAssertEqual(failure.kind, .membershipChain, file: file, line: line)
                XCTAssertEqual(failure.channelID, channel, file: file, line: line)
            } catch {
                XCTFail("unexpected \(error)", file: file, line: line)
            }
        }
        await assertRefusesChain { _ = try await bob.client.members(of: channel) }
        // The next send must rotate (the key expired), and the rotation refuses the chain:
        // no key is ever wrapped for mallory.
        await assertRefusesChain { _ = try await alice.client.send(text: "for mallory too?", to: channel) }
        let copies = try harness.sql("SELECT count(*) FROM channel_key_copies WHERE user_id = $1::uuid", [.id(mallory.identity.userID)])
        XCTAssertEqual(try copies.rows.first?.int(0), 0)
        // A newcomer verifying from genesis refuses it as well.
        let fresh = harness.client()
        try await fresh.auth(identity: bob.identity)
        await assertRefusesChain { _ = try await fresh.membershipChain(of: channel) }
        for person in [alice, bob] {
            let alerted = await person.events.wait { recorder in
                recorder.alerts.contains { alert in
                    if case .verificationFailed(let failure) = alert { return failure.kind == .membershipChain }
                    return false
                }
            }
            XCTAssertTrue(alerted, person.identity.username)
        }
        await harness.stop()
    }
    func testAReplayedMessageIsDroppedButHistoryReadsAgain() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "replay", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        try await alice.client.send(text: "pay bob 10", to: channel)
        let first = await bob.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(first)

        // The relay stores the same ciphertext again under the next seq (its own database
        // would refuse the repeated key_id/iv, so the test lifts that constraint first).
        _ = try harness.sql("ALTER TABLE messages DROP CONSTRAINT messages_iv_once")
        _ = try harness.sql("""
            WITH bumped AS (UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1::uuid RETURNING last_seq)
            INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts)
            SELECT m.channel_id, bumped.last_seq, m.sender_id, $2::uuid, m.key_id, m.iv, m.ciphertext, m.ts
            FROM messages m, bumped WHERE m.channel_id = $1::uuid AND m.seq = 1
            """, [.id(channel), .id(ID.random())])
        try await alice.client.send(text: "that was all", to: channel)

        // Live: seq 2 is paged from history and dropped as a replay; seq 3 follows.
        let live = await bob.events.wait { $0.messages(in: channel).count == 2 }
        XCTAssertTrue(live)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.seq), [1, 3])
        let alerted = await bob.events.wait { $0.alerts.contains(.replayDropped(channelID: channel, seq: 2, firstSeq: 1)) }
        XCTAssertTrue(alerted)
        // Reading history again is not a replay: seq 1 shows, seq 2 stays dropped.
        let page = try await bob.client.history(of: channel)
        XCTAssertEqual(page.messages.map(\.seq), [1, 3])
        XCTAssertEqual(page.messages.map(\.text), ["pay bob 10", "that was all"])
        await harness.stop()
    }
}
