// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.26;

/// @title BEAT's ledger (docs/ledger.md): nodes, links, SLAs, Merkle anchors and disputes.
/// @notice The deployer is the governance. Only the governance registers nodes, links and SLAs
///         and moves disputes on; a registered node anchors for itself only, with its registered
///         account; anchors are idempotent per (nodeId, batchSeq) and gap-free.
contract Beat {
    // ---------------------------------------------------------------- errors
    // Permission (PermissionDenied in ledger_client)
    error NotGovernance(address caller);
    error NotNodeAccount(uint64 nodeId, address caller, address registered); // registered == 0: unknown node
    error NotTenantOrGovernance(uint64 slaId, address caller);
    // Conflicts (ConflictError)
    error NodeExists(uint64 nodeId);
    error SLAExists(uint64 slaId);
    error AnchorConflict(uint64 nodeId, uint64 batchSeq, bytes32 existingRoot, bytes32 root);
    // Order (OrderError)
    error BatchSeqGap(uint64 nodeId, uint64 expected, uint64 got);
    error WrongDisputeState(uint64 disputeId, uint8 state, uint8 required);
    // Not found (NotFound)
    error UnknownSLA(uint64 slaId);
    error UnknownDispute(uint64 disputeId);
    error UnknownNode(uint64 nodeId);
    error UnknownLink(uint64 a, uint64 b);
    // Bad arguments (LedgerError)
    error InvalidNode(uint64 nodeId, string why);
    error InvalidLink(uint64 a, uint64 b, string why);
    error InvalidSLA(uint64 slaId, string why);
    error InvalidRange(uint64 fromNs, uint64 toNs);
    error FaultyNotOnRoute(uint64 disputeId, uint64 nodeId);
    error FaultyDuplicate(uint64 disputeId, uint64 nodeId);

    // ---------------------------------------------------------------- events
    event NodeRegistered(uint64 indexed nodeId, string owner, bytes32 pubkey, address account);
    event LinkRegistered(uint64 indexed a, uint64 indexed b);     // a < b
    event LinkRetired(uint64 indexed a, uint64 indexed b);
    event SLARegistered(uint64 indexed slaId, string tenant, address tenantAccount);
    event Anchored(uint64 indexed nodeId, uint64 indexed batchSeq, uint64 treeSize, bytes32 root,
                   uint64 firstTNs, uint64 lastTNs);
    event DisputeOpened(uint64 indexed disputeId, uint64 indexed slaId, uint64 fromNs, uint64 toNs,
                        address opener);
    event EvidenceRecorded(uint64 indexed disputeId, bytes32 evidenceDigest);
    event Decided(uint64 indexed disputeId, bytes32 verdictDigest, uint64[] faulty, uint256 penalty);
    event Settled(uint64 indexed disputeId, uint64 indexed slaId, uint256 penalty);

    // ---------------------------------------------------------------- types
    struct NodeRec {
        bool exists;
        string owner;
        bytes32 pubkey;        // Ed25519 public key of the device
        address account;       // the address the device signs its transactions with
        uint64 nextSeq;        // the next batchSeq this node must anchor
    }

    /// RO-SLA and QM-SLA terms (qmTerms: canonical JSON, sorted keys, no spaces).
    struct SLATerms {
        uint64 slaId;
        string tenant;
        address tenantAccount; // may open disputes on this SLA (0: the governance only)
        bytes16 src;
        bytes16 dst;
        uint64[] route;
        uint64 maxLossPpm;
        uint64 maxDelayUs;
        uint64 lossBudgetPpm;
        uint256 penaltyPerViolation;
        uint64 validFromNs;
        uint64 validToNs;
        string qmTerms;
    }

    struct AnchorRec {
        uint64 treeSize;
        uint64 firstTNs;
        uint64 lastTNs;
        uint64 blockNumber;    // where it landed (0: none)
        bytes32 root;
    }

    // state: 0 none, 1 opened, 2 evidence, 3 decided, 4 settled
    struct DisputeRec {
        uint64 disputeId;
        uint64 slaId;
        uint64 fromNs;
        uint64 toNs;
        uint8 state;
        bytes32 evidenceDigest;
        bytes32 verdictDigest;
        uint64[] faulty;
        uint256 penalty;
        address opener;
    }

    uint8 public constant OPENED = 1;
    uint8 public constant EVIDENCE = 2;
    uint8 public constant DECIDED = 3;
    uint8 public constant SETTLED = 4;

    address public immutable governance;
    uint64 public immutable deployedAt;   // the deployment block: where to start reading events
    string public hashName;     // the domain's hash ("sha3-256" or "blake2b-256")

    mapping(uint64 => NodeRec) private _nodes;
    uint64[] private _nodeIds;
    // links, undirected, keyed (a << 64) | b with a < b: 0 never registered, 1 active, 2 retired
    uint8 public constant LINK_ACTIVE = 1;
    uint8 public constant LINK_RETIRED = 2;
    mapping(uint128 => uint8) private _linkState;
    uint128[] private _linkKeys;          // every link ever registered, in registration order
    mapping(uint64 => bool) private _slaExists;
    mapping(uint64 => SLATerms) private _slas;
    uint64[] private _slaIds;
    mapping(uint64 => mapping(uint64 => AnchorRec)) private _anchors;
    mapping(uint64 => DisputeRec) private _disputes;
    uint64 public disputeCount;   // dispute ids are 1..disputeCount

    constructor(string memory hashName_) {
        governance = msg.sender;
        deployedAt = uint64(block.number);
        hashName = hashName_;
    }

    modifier onlyGovernance() {
        if (msg.sender != governance) revert NotGovernance(msg.sender);
        _;
    }

    // ---------------------------------------------------------------- registration
    function registerNode(uint64 nodeId, string calldata owner, bytes32 pubkey, address account)
        external onlyGovernance
    {
        if (nodeId == 0 || nodeId == type(uint64).max) revert InvalidNode(nodeId, "nodeId must be in 1..2^64-2");
        if (account == address(0)) revert InvalidNode(nodeId, "account must not be the zero address");
        if (_nodes[nodeId].exists) revert NodeExists(nodeId);
        _nodes[nodeId] = NodeRec(true, owner, pubkey, account, 0);
        _nodeIds.push(nodeId);
        emit NodeRegistered(nodeId, owner, pubkey, account);
    }

    function _linkKey(uint64 x, uint64 y) private pure returns (uint64 a, uint64 b, uint128 key) {
        (a, b) = x < y ? (x, y) : (y, x);
        if (a == b) revert InvalidLink(a, b, "a link joins two different nodes");
        key = (uint128(a) << 64) | b;
    }

    /// An undirected link between two registered nodes. Idempotent: an active link again is a
    /// no-op (no event); a retired one becomes active again.
    function registerLink(uint64 x, uint64 y) external onlyGovernance {
        (uint64 a, uint64 b, uint128 key) = _linkKey(x, y);
        if (!_nodes[a].exists) revert UnknownNode(a);
        if (!_nodes[b].exists) revert UnknownNode(b);
        uint8 state = _linkState[key];
        if (state == LINK_ACTIVE) return;
        if (state == 0) _linkKeys.push(key);
        _linkState[key] = LINK_ACTIVE;
        emit LinkRegistered(a, b);
    }

    /// The link no longer exists. Idempotent: a retired link again is a no-op (no event).
    function retireLink(uint64 x, uint64 y) external onlyGovernance {
        (uint64 a, uint64 b, uint128 key) = _linkKey(x, y);
        uint8 state = _linkState[key];
        if (state == 0) revert UnknownLink(a, b);
        if (state == LINK_RETIRED) return;
        _linkState[key] = LINK_RETIRED;
        emit LinkRetired(a, b);
    }

    function registerSLA(SLATerms calldata s) external onlyGovernance {
        if (_slaExists[s.slaId]) revert SLAExists(s.slaId);
        if (s.route.length == 0) revert InvalidSLA(s.slaId, "route must not be empty");
        if (s.validFromNs > s.validToNs) revert InvalidSLA(s.slaId, "validFromNs after validToNs");
        _slaExists[s.slaId] = true;
        _slas[s.slaId] = s;
        _slaIds.push(s.slaId);
        emit SLARegistered(s.slaId, s.tenant, s.tenantAccount);
    }

    // ---------------------------------------------------------------- anchors
    /// @return anchored true when recorded now, false when the identical anchor was already there
    function anchor(uint64 nodeId, uint64 batchSeq, uint64 treeSize, bytes32 root, uint64 firstTNs,
                    uint64 lastTNs) external returns (bool anchored)
    {
        NodeRec storage n = _nodes[nodeId];
        if (!n.exists || msg.sender != n.account) revert NotNodeAccount(nodeId, msg.sender, n.account);
        if (batchSeq < n.nextSeq) {
            AnchorRec storage e = _anchors[nodeId][batchSeq];
            if (e.root == root && e.treeSize == treeSize && e.firstTNs == firstTNs && e.lastTNs == lastTNs)
                return false;
            revert AnchorConflict(nodeId, batchSeq, e.root, root);
        }
        if (batchSeq > n.nextSeq) revert BatchSeqGap(nodeId, n.nextSeq, batchSeq);
        _anchors[nodeId][batchSeq] = AnchorRec(treeSize, firstTNs, lastTNs, uint64(block.number), root);
        n.nextSeq = batchSeq + 1;
        emit Anchored(nodeId, batchSeq, treeSize, root, firstTNs, lastTNs);
        return true;
    }

    // ---------------------------------------------------------------- disputes
    function openDispute(uint64 slaId, uint64 fromNs, uint64 toNs) external returns (uint64 disputeId) {
        if (!_slaExists[slaId]) revert UnknownSLA(slaId);
        address t = _slas[slaId].tenantAccount;
        if (msg.sender != governance && (t == address(0) || msg.sender != t))
            revert NotTenantOrGovernance(slaId, msg.sender);
        if (fromNs > toNs) revert InvalidRange(fromNs, toNs);
        disputeId = ++disputeCount;
        DisputeRec storage d = _disputes[disputeId];
        d.disputeId = disputeId;
        d.slaId = slaId;
        d.fromNs = fromNs;
        d.toNs = toNs;
        d.state = OPENED;
        d.opener = msg.sender;
        emit DisputeOpened(disputeId, slaId, fromNs, toNs, msg.sender);
    }

    function _dispute(uint64 disputeId, uint8 required) private view returns (DisputeRec storage d) {
        d = _disputes[disputeId];
        if (d.state == 0) revert UnknownDispute(disputeId);
        if (d.state != required) revert WrongDisputeState(disputeId, d.state, required);
    }

    function recordEvidence(uint64 disputeId, bytes32 evidenceDigest) external onlyGovernance {
        DisputeRec storage d = _dispute(disputeId, OPENED);
        d.evidenceDigest = evidenceDigest;
        d.state = EVIDENCE;
        emit EvidenceRecorded(disputeId, evidenceDigest);
    }

    /// penalty = penaltyPerViolation x faulty.length; each faulty node on the SLA's route, once.
    function decide(uint64 disputeId, bytes32 verdictDigest, uint64[] calldata faulty)
        external onlyGovernance
    {
        DisputeRec storage d = _dispute(disputeId, EVIDENCE);
        SLATerms storage s = _slas[d.slaId];
        for (uint256 i = 0; i < faulty.length; i++) {
            bool onRoute = false;
            for (uint256 j = 0; j < s.route.length; j++) {
                if (s.route[j] == faulty[i]) { onRoute = true; break; }
            }
            if (!onRoute) revert FaultyNotOnRoute(disputeId, faulty[i]);
            for (uint256 k = 0; k < i; k++) {
                if (faulty[k] == faulty[i]) revert FaultyDuplicate(disputeId, faulty[i]);
            }
        }
        d.verdictDigest = verdictDigest;
        d.faulty = faulty;
        d.penalty = s.penaltyPerViolation * faulty.length;
        d.state = DECIDED;
        emit Decided(disputeId, verdictDigest, faulty, d.penalty);
    }

    function settle(uint64 disputeId) external onlyGovernance {
        DisputeRec storage d = _dispute(disputeId, DECIDED);
        d.state = SETTLED;
        emit Settled(disputeId, d.slaId, d.penalty);
    }

    // ---------------------------------------------------------------- views
    function getAnchor(uint64 nodeId, uint64 batchSeq) external view
        returns (bool exists, uint64 treeSize, bytes32 root, uint64 firstTNs, uint64 lastTNs,
                 uint64 blockNumber)
    {
        AnchorRec storage e = _anchors[nodeId][batchSeq];
        exists = batchSeq < _nodes[nodeId].nextSeq;
        return (exists, e.treeSize, e.root, e.firstTNs, e.lastTNs, e.blockNumber);
    }

    function nextBatchSeq(uint64 nodeId) external view returns (uint64) {
        return _nodes[nodeId].nextSeq;
    }

    function getNode(uint64 nodeId) external view
        returns (bool exists, string memory owner, bytes32 pubkey, address account, uint64 nextSeq)
    {
        NodeRec storage n = _nodes[nodeId];
        return (n.exists, n.owner, n.pubkey, n.account, n.nextSeq);
    }

    function nodeIds() external view returns (uint64[] memory) {
        return _nodeIds;
    }

    /// 0 never registered, LINK_ACTIVE, LINK_RETIRED (either order of the two ends).
    function linkState(uint64 x, uint64 y) external view returns (uint8) {
        (, , uint128 key) = _linkKey(x, y);
        return _linkState[key];
    }

    /// Every active link (a[i], b[i]) with a[i] < b[i], in registration order.
    function linkList() external view returns (uint64[] memory a, uint64[] memory b) {
        uint256 n = 0;
        for (uint256 i = 0; i < _linkKeys.length; i++) {
            if (_linkState[_linkKeys[i]] == LINK_ACTIVE) n++;
        }
        a = new uint64[](n);
        b = new uint64[](n);
        uint256 j = 0;
        for (uint256 i = 0; i < _linkKeys.length; i++) {
            uint128 key = _linkKeys[i];
            if (_linkState[key] == LINK_ACTIVE) {
                a[j] = uint64(key >> 64);
                b[j] = uint64(key);
                j++;
            }
        }
    }

    function getSLA(uint64 slaId) external view returns (bool exists, SLATerms memory sla) {
        return (_slaExists[slaId], _slas[slaId]);
    }

    function slaIds() external view returns (uint64[] memory) {
        return _slaIds;
    }

    function getDispute(uint64 disputeId) external view returns (bool exists, DisputeRec memory dispute) {
        DisputeRec storage d = _disputes[disputeId];
        return (d.state != 0, d);
    }
}
