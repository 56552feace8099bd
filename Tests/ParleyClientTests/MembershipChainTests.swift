import ParleyClient
import ParleyCrypto
import ParleyProtocol
import XCTest

/// Chain verification on hand-made chains with real RSA-PSS signatures: no relay.
final class MembershipChainTests: XCTestCase {
    struct Person {
        var id: ID
        var key: RSAPrivateKey
    }

    let channel = ID.random()
    var people: [Person] = []
    var keys: [ID: RSAPublicKey] = [:]

    override func setUpWithError() throws {
        // Ids in a known order: people[0] < people[1] < people[2] < people[3].
        let ids = ["10000000-0000-4000-8000-000000000001", "20000000-0000-4000-8000-000000000002",
                   "30000000-0000-4000-8000-000000000003", "40000000-0000-4000-8000-000000000004"]
        people = try ids.enumerated().map { index, text in Person(id: ID(text)!, key: try TestKeys.key(index)) }
        keys = Dictionary(uniqueKeysWithValues: people.map { ($0.id, $0.key.publicKey) })
    }

    var a: Person { people[0] }
    var b: Person { people[1] }
    var c: Person { people[2] }
    var d: Person { people[3] }

    func verify(_ signer: ID, _ text: [UInt8], _ sig: [UInt8]) -> Bool {
        keys[signer]?.isValidSignature(sig, for: text) ?? false
    }

    func signed(_ statement: MembershipStatement, by person: Person) throws -> MembershipStatement {
        var statement = statement
        statement.sig = try person.key.signature(for: statement.signedText(channelID: channel))
        return statement
    }

    /// v1 {a,b,c} owned by a, v2 adds d, v3 removes b.
    func validChain() throws -> [MembershipStatement] {
        var chain = MembershipChain(channelID: channel)
        let v1 = try signed(MembershipChain.firstStatement(owner: a.id, members: [b.id, c.id], ts: 1_000), by: a)
        try chain.extend(with: [v1], verify: verify)
        let v2 = try signed(chain.nextStatement(adding: true, user: d.id, signer: a.id, now: 1_010), by: a)
        try chain.extend(with: [v2], verify: verify)
        let v3 = try signed(chain.nextStatement(adding: false, user: b.id, signer: a.id, now: 1_020), by: a)
        try chain.extend(with: [v3], verify: verify)
        return [v1, v2, v3]
    }

    func assertRefused(_ statements: [MembershipStatement], from start: MembershipChain? = nil, _ fragment: String = "",
                       file: StaticString = #filePath, line: UInt = #line) {
        var chain = start ?? MembershipChain(channelID: channel)
        let before = chain
        do {
            try chain.extend(with: statements, verify: verify)
            XCTFail("accepted a chain that should be refused", file: file, line: line)
        } catch {
            XCTAssertEqual(error.kind, .membershipChain, file: file, line: line)
            XCTAssertEqual(error.channelID, channel, file: file, line: line)
            if !fragment.isEmpty {
                XCTAssertTrue(error.detail.contains(fragment), "\(error.detail)", file: file, line: line)
            }
            XCTAssertEqual(chain, before, "a refused extension changes nothing", file: file, line: line)
        }
    }

    func testValidChainFromGenesisAndInParts() throws {
        let statements = try validChain()
        var whole = MembershipChain(channelID: channel)
        try whole.extend(with: statements, verify: verify)
        XCTAssertEqual(whole.version, 3)
        XCTAssertEqual(whole.members, [a.id, c.id, d.id])
        XCTAssertEqual(whole.owner, a.id)
        XCTAssertEqual(whole.headHash, SHA256.hash(statements[2].signedText(channelID: channel)))

        // From the last verified version: the first part, then the rest (repeats are fine).
        var parts = MembershipChain(channelID: channel)
        try parts.extend(with: [statements[0]], verify: verify)
        try parts.extend(with: Array(statements[0...2]), verify: verify)
        XCTAssertEqual(parts, whole)
        XCTAssertEqual(parts.statement(version: 2), statements[1])
        XCTAssertNil(parts.statement(version: 4))
    }

    func testForgedSignatureIsRefused() throws {
        var statements = try validChain()
        statements[1].sig = try b.key.signature(for: statements[1].signedText(channelID: channel))
        assertRefused(statements, "does not verify")
        // Signed by the right person for another channel.
        var other = try validChain()
        other[0].sig = try a.key.signature(for: other[0].signedText(channelID: ID.random()))
        assertRefused(other)
        // Garbage.
        var garbage = try validChain()
        garbage[2].sig = Array(repeating: 7, count: 256)
        assertRefused(garbage)
    }

    func testNonOwnerMayNotAddOrRemoveOthers() throws {
        let statements = try validChain()
        var chain = MembershipChain(channelID: channel)
        try chain.extend(with: [statements[0]], verify: verify)
        // c (a member, not the owner) adds d, with a valid signature of its own.
        let byC = try signed(chain.nextStatement(adding: true, user: d.id, signer: c.id, now: 1_010), by: c)
        assertRefused([byC], from: chain)
        // c removes b.
        let removal = try signed(chain.nextStatement(adding: false, user: b.id, signer: c.id, now: 1_010), by: c)
        assertRefused([removal], from: chain)
        // But c may leave by itself.
        let leave = try signed(chain.nextStatement(adding: false, user: c.id, signer: c.id, now: 1_010), by: c)
        try chain.extend(with: [leave], verify: verify)
        XCTAssertEqual(chain.members, [a.id, b.id])
    }

    func testChainStructureIsChecked() throws {
        let statements = try validChain()
        // A gap.
        assertRefused([statements[0], statements[2]], "does not follow")
        // Not from genesis.
        assertRefused([statements[1]], "does not follow")
        // `prev` not the hash of the previous statement.
        var chain = MembershipChain(channelID: channel)
        try chain.extend(with: [statements[0]], verify: verify)
        var badPrev = try chain.nextStatement(adding: true, user: d.id, signer: a.id, now: 1_010)
        badPrev.prev = Array(repeating: 1, count: 32)
        assertRefused([try signed(badPrev, by: a)], from: chain)
        // Two members added at once.
        var two = try chain.nextStatement(adding: true, user: d.id, signer: a.id, now: 1_010)
        two.members = [a.id, b.id, c.id, d.id, ID.random()]
        assertRefused([try signed(two, by: a)], from: chain, "exactly one")
        // `ts` going backwards.
        var early = try chain.nextStatement(adding: true, user: d.id, signer: a.id, now: 1_010)
        early.ts = 999
        assertRefused([try signed(early, by: a)], from: chain)
        // A version 1 naming someone else as owner.
        var foreignOwner = MembershipChain.firstStatement(owner: a.id, members: [b.id], ts: 1_000)
        foreignOwner.ownerID = b.id
        assertRefused([try signed(foreignOwner, by: a)])
    }

    func testForkIsRefused() throws {
        let statements = try validChain()
        var chain = MembershipChain(channelID: channel)
        try chain.extend(with: statements, verify: verify)
        // Another, validly signed version 2.
        var shortChain = MembershipChain(channelID: channel)
        try shortChain.extend(with: [statements[0]], verify: verify)
        let otherV2 = try signed(shortChain.nextStatement(adding: false, user: c.id, signer: a.id, now: 1_010), by: a)
        assertRefused([otherV2], from: chain, "fork")
    }

    func testOwnerLeavesToTheLongestStandingMember() throws {
        // v1 {a, c} by a; v2 adds b; v3 a leaves: c (v1) outranks b (v2) though b < c.
        var chain = MembershipChain(channelID: channel)
        try chain.extend(with: [try signed(MembershipChain.firstStatement(owner: a.id, members: [c.id], ts: 1), by: a)],
                         verify: verify)
        try chain.extend(with: [try signed(chain.nextStatement(adding: true, user: b.id, signer: a.id, now: 2), by: a)],
                         verify: verify)
        XCTAssertEqual(chain.successor(leaving: a.id), c.id)
        let leave = try signed(chain.nextStatement(adding: false, user: a.id, signer: a.id, now: 3), by: a)
        XCTAssertEqual(leave.ownerID, c.id)
        try chain.extend(with: [leave], verify: verify)
        XCTAssertEqual(chain.owner, c.id)

        // Naming b instead is refused, though validly signed.
        var wrong = MembershipChain(channelID: channel)
        try wrong.extend(with: Array(chain.statements.prefix(2)), verify: verify)
        var otherHeir = try wrong.nextStatement(adding: false, user: a.id, signer: a.id, now: 3)
        otherHeir.ownerID = b.id
        assertRefused([try signed(otherHeir, by: a)], from: wrong, "longest-standing")

        // Ties among version 1 members go to the smaller id; a re-added member counts from its latest join.
        var tie = MembershipChain(channelID: channel)
        try tie.extend(with: [try signed(MembershipChain.firstStatement(owner: d.id, members: [c.id, b.id], ts: 1), by: d)],
                       verify: verify)
        XCTAssertEqual(tie.successor(leaving: d.id), b.id)
        try tie.extend(with: [try signed(tie.nextStatement(adding: false, user: b.id, signer: d.id, now: 2), by: d)], verify: verify)
        try tie.extend(with: [try signed(tie.nextStatement(adding: true, user: b.id, signer: d.id, now: 3), by: d)], verify: verify)
        XCTAssertEqual(tie.successor(leaving: d.id), c.id)

        // The last member leaving closes the channel: no owner, no members.
        var alone = MembershipChain(channelID: channel)
        try alone.extend(with: [try signed(MembershipChain.firstStatement(owner: a.id, members: [], ts: 1), by: a)], verify: verify)
        let last = try signed(alone.nextStatement(adding: false, user: a.id, signer: a.id, now: 2), by: a)
        XCTAssertNil(last.ownerID)
        try alone.extend(with: [last], verify: verify)
        XCTAssertEqual(alone.members, [])
        XCTAssertThrowsError(try alone.nextStatement(adding: true, user: b.id, signer: a.id, now: 3))
    }

    func testNextStatementRefusesNoOpChanges() throws {
        var chain = MembershipChain(channelID: channel)
        XCTAssertThrowsError(try chain.nextStatement(adding: true, user: b.id, signer: a.id, now: 1))
        try chain.extend(with: [try signed(MembershipChain.firstStatement(owner: a.id, members: [b.id], ts: 1), by: a)],
                         verify: verify)
        XCTAssertThrowsError(try chain.nextStatement(adding: true, user: b.id, signer: a.id, now: 1))
        XCTAssertThrowsError(try chain.nextStatement(adding: false, user: c.id, signer: a.id, now: 1))
        // `ts` never goes below the head's.
        XCTAssertEqual(try chain.nextStatement(adding: true, user: c.id, signer: a.id, now: 0).ts, 1)
    }
}
