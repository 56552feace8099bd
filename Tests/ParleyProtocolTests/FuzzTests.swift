import XCTest

@testable import ParleyProtocol

/// Random mutations of valid frames: the decoders must never trap, every outcome is a
/// frame or a rejection, and whatever decodes re-encodes to the same frame.
final class FuzzTests: XCTestCase {
    private func mutate(_ input: [UInt8], using rng: inout SplitMix64) -> [UInt8] {
        var bytes = input
        let interesting: [UInt8] = Array("{}[]\",:\\-.0e1nutf ".utf8) + [0x00, 0x1F, 0x7F, 0x80, 0xC0, 0xED, 0xF4, 0xFF]
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            switch Int.random(in: 0..<6, using: &rng) {
            case 0 where !bytes.isEmpty:  // flip a bit
                let index = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[index] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            case 1 where !bytes.isEmpty:  // truncate
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 2:  // insert a structural or odd byte
                let index = Int.random(in: 0...bytes.count, using: &rng)
                bytes.insert(interesting.randomElement(using: &rng) ?? 0, at: index)
            case 3 where !bytes.isEmpty:  // delete a byte
                bytes.remove(at: Int.random(in: 0..<bytes.count, using: &rng))
            case 4 where !bytes.isEmpty:  // replace with a random byte
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            default:  // duplicate a slice
                guard bytes.count > 2 else { break }
                let start = Int.random(in: 0..<(bytes.count - 1), using: &rng)
                let end = Int.random(in: (start + 1)...bytes.count, using: &rng)
                bytes.insert(contentsOf: bytes[start..<end], at: Int.random(in: 0...bytes.count, using: &rng))
            }
        }
        return bytes
    }

    func testMutatedFramesNeverTrapAndDecodeConsistently() {
        let requestCorpus = Fixture.requests.enumerated().map { RequestFrame(id: "f\($0.offset)", request: $0.element).encode() }
        let serverCorpus =
            Fixture.responses.map { ResultFrame(re: "r", response: $0).encode() }
            + Fixture.events.map { $0.encode() } + Fixture.errors.map { $0.encode() }
        let corpus = requestCorpus + serverCorpus
        var rng = SplitMix64(seed: 0x5EED)
        var requestsAccepted = 0, requestsRejected = 0, serverAccepted = 0, serverRejected = 0

        for _ in 0..<20_000 {
            let seed = corpus.randomElement(using: &rng) ?? []
            let input = mutate(seed, using: &rng)

            switch RequestDecoder.decode(input) {
            case .success(let frame):
                requestsAccepted += 1
                XCTAssertEqual(try RequestFrame.decode(frame.encode()), frame)
            case .failure(let rejection):
                requestsRejected += 1
                XCTAssertTrue(rejection.code == .badRequest || rejection.code == .unknownType)
                if let re = rejection.re { XCTAssertTrue(Limits.requestIDLength.contains(re.unicodeScalars.count)) }
                XCTAssertFalse(rejection.message.isEmpty)
            }

            do {
                let frame = try ServerFrame.decode(input)
                serverAccepted += 1
                XCTAssertEqual(try ServerFrame.decode(frame.encode()), frame)
            } catch {
                serverRejected += 1
            }

            // The JSON layer alone: anything it accepts survives a write/parse cycle.
            if let value = try? JSONParser.parse(input), !containsNonFinite(value) {
                XCTAssertEqual(try JSONParser.parse(value.encoded()), value)
            }
        }
        // The mutations must exercise both outcomes of both decoders.
        XCTAssertGreaterThan(requestsAccepted, 100)
        XCTAssertGreaterThan(requestsRejected, 1000)
        XCTAssertGreaterThan(serverAccepted, 100)
        XCTAssertGreaterThan(serverRejected, 1000)
    }

    func testRandomBytesNeverTrap() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<5_000 {
            let length = Int.random(in: 0...64, using: &rng)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if case .success = RequestDecoder.decode(bytes) { XCTFail("random bytes decoded as a request") }
            XCTAssertThrowsError(try ServerFrame.decode(bytes))
        }
    }

    private func containsNonFinite(_ value: JSONValue) -> Bool {
        switch value {
        case .number(let number): return !number.isFinite
        case .array(let elements): return elements.contains(where: containsNonFinite)
        case .object(let object): return object.entries.contains { containsNonFinite($0.value) }
        default: return false
        }
    }
}
