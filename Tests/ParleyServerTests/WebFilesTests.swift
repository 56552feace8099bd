import Foundation
@testable import ParleyServer
import XCTest

/// The web client's files: read once, served only by exact path, with the page's headers.
final class WebFilesTests: XCTestCase {
    private var root: URL!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("webfiles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root.appendingPathComponent("js"), withIntermediateDirectories: true)
        try Data("<!doctype html>".utf8).write(to: root.appendingPathComponent("index.html"))
        try Data("export {}".utf8).write(to: root.appendingPathComponent("js/app.js"))
        try Data("body{}".utf8).write(to: root.appendingPathComponent("style.css"))
        try Data("secret".utf8).write(to: root.appendingPathComponent(".env"))
        try Data("#!/bin/sh".utf8).write(to: root.appendingPathComponent("run.sh"))
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: root)
    }

    func testServesKnownTypesByExactPath() throws {
        let web = try WebFiles(folder: root)
        XCTAssertEqual(web.file(for: "/")?.contentType, "text/html; charset=utf-8")
        XCTAssertEqual(web.file(for: "/index.html")?.body, Array("<!doctype html>".utf8))
        XCTAssertEqual(web.file(for: "/js/app.js")?.contentType, "text/javascript; charset=utf-8")
        XCTAssertEqual(web.file(for: "/style.css?v=2")?.contentType, "text/css; charset=utf-8", "the query is ignored")
    }

    func testHiddenFilesOtherTypesAndPathsOutsideAreNotServed() throws {
        let outside = root.deletingLastPathComponent().appendingPathComponent("outside-\(UUID().uuidString).js")
        try Data("leak".utf8).write(to: outside)
        defer { try? FileManager.default.removeItem(at: outside) }
        try FileManager.default.createSymbolicLink(at: root.appendingPathComponent("js/link.js"), withDestinationURL: outside)

        let web = try WebFiles(folder: root)
        for path in ["/.env", "/run.sh", "/js/link.js", "/../\(outside.lastPathComponent)", "/js/../../etc/passwd",
                     "/%2e%2e/index.html", "index.html", "", "/js", "/js/"] {
            XCTAssertNil(web.file(for: path), path)
        }
    }

    func testATooLargeFolderIsRefused() throws {
        let big = [UInt8](repeating: 0x61, count: WebFiles.maxBytes + 1)
        try Data(big).write(to: root.appendingPathComponent("big.js"))
        XCTAssertThrowsError(try WebFiles(folder: root))
    }

    func testTheHeadersForbidInlineScriptAndFraming() {
        let headers = Dictionary(uniqueKeysWithValues: WebFiles.securityHeaders)
        let policy = try? XCTUnwrap(headers["content-security-policy"])
        XCTAssertTrue(policy?.contains("script-src 'self'") == true)
        XCTAssertFalse(policy?.contains("unsafe-inline") == true)
        XCTAssertFalse(policy?.contains("unsafe-eval") == true)
        XCTAssertTrue(policy?.contains("frame-ancestors 'none'") == true)
        XCTAssertEqual(headers["x-content-type-options"], "nosniff")
        XCTAssertEqual(headers["referrer-policy"], "no-referrer")
    }
}
