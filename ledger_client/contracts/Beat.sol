// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.26;

/// @title BEAT's ledger (docs/ledger.md): nodes, links, SLAs, Merkle anchors and disputes.
/// @notice The governance is a committee (docs/ledger.md, "The committee"): members (an account
///         each, with the member's Ed25519 key as data) and a threshold k of n, fixed at
///         deployment and changed only by the committee. Every governance act is a proposal that
///         executes when k distinct current members approved the same content (the proposer's
///         proposal is its approval); proposals expire after proposalTtl seconds and a
///         membership or threshold change (a new epoch) voids the open ones. With k = 1 a member
///         may also call the acts directly (registerNode, ...): the single governance of before.
///         A registered node anchors for itself only, with its registered account; anchors are
///         idempotent per (nodeId, batchSeq) and gap-free.
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
    // The committee
    error NeedsProposal(uint64 threshold);             // a direct act while k > 1 (Permission)
    error UnknownProposal(uint64 proposalId);          // NotFound
    error ProposalExpired(uint64 proposalId, uint64 expiredAt);        // Order
    error ProposalStale(uint64 proposalId, uint64 epoch, uint64 currentEpoch); // Order
    error ProposalDone(uint64 proposalId);             // Order: already executed
    error UnknownAct(uint8 act);                       // LedgerError
    error InvalidCommittee(string why);                // LedgerError: k out of 1..n, a member twice, ...
    error DecisionConflict(uint64 disputeId, address member, bytes32 approvedContent); // Conflict
    // Money
    error NotOperator(uint64 nodeId, address caller, address operator);      // Permission
    error WithdrawalNotDue(uint64 nodeId, uint64 dueAt);                     // Order
    error DepositFrozen(uint64 nodeId, uint64 disputeId);                    // Order: a dispute open
    error DepositInDebt(uint64 nodeId, uint256 debt);                        // Order
    error Reentrant();
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
    event NodeRetired(uint64 indexed nodeId);
    event Proposed(uint64 indexed proposalId, uint8 act, address indexed proposer, uint64 epoch,
                   bytes args);
    event Approved(uint64 indexed proposalId, address indexed member, uint64 approvals);
    event Executed(uint64 indexed proposalId);
    event CommitteeChanged(uint64 epoch, uint64 threshold, address[] members);
    event DecisionApproved(uint64 indexed disputeId, address indexed member, bytes32 content,
                           bytes32 evidenceDigest, bytes32 verdictDigest, uint64[] faulty,
                           uint64 approvals);
    event Dissent(uint64 indexed disputeId, address indexed member, bytes32 verdictDigest);
    // the money: every movement
    event Deposited(uint64 indexed nodeId, address indexed from, uint256 amount, uint256 deposit);
    event PenaltyPaid(uint64 indexed disputeId, uint64 indexed nodeId, address indexed tenant,
                      uint256 amount);
    event DebtRecorded(uint64 indexed disputeId, uint64 indexed nodeId, address indexed tenant,
                       uint256 amount);
    event DebtPaid(uint64 indexed disputeId, uint64 indexed nodeId, address indexed tenant,
                   uint256 amount);
    event Credited(address indexed to, uint256 amount);     // a push that failed: pull it
    event CreditWithdrawn(address indexed to, uint256 amount);
    event WithdrawalRequested(uint64 indexed nodeId, uint64 dueAt, uint64 lapsesAt);
    event Withdrawn(uint64 indexed nodeId, address indexed to, uint256 amount);

    // ---------------------------------------------------------------- types
    struct NodeRec {
        bool exists;
        string owner;
        bytes32 pubkey;        // Ed25519 public key of the device
        address account;       // the address the device signs its transactions with
        uint64 nextSeq;        // the next batchSeq this node must anchor
        address operator;      // the operator's account: locks the node's deposit (0: none)
        bool retired;          // retired by the committee: anchors no more
    }

    /// A proposal: act and its ABI-encoded arguments (the content), the epoch it was made in,
    /// when (block.timestamp), and who approved it (the proposer first).
    struct Proposal {
        uint8 act;
        bool executed;
        uint64 epoch;
        uint64 createdAt;
        address[] approvers;
        bytes args;
    }

    /// A member's approval of a dispute decision: the content's hash and its parts.
    struct Vote {
        address member;
        uint64 epoch;
        uint64 at;
        bytes32 content;       // keccak256(abi.encode(disputeId, evidence, verdict, faulty))
        bytes32 evidenceDigest;
        bytes32 verdictDigest;
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
        uint256 price;         // what the tenant pays for the service (wei; recorded)
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

    // acts a proposal may carry (args: abi.encode of the act's parameters)
    uint8 public constant ACT_REGISTER_NODE = 1;   // (uint64, string, bytes32, address, address)
    uint8 public constant ACT_RETIRE_NODE = 2;     // (uint64)
    uint8 public constant ACT_REGISTER_SLA = 3;    // (SLATerms)
    uint8 public constant ACT_REGISTER_LINK = 4;   // (uint64, uint64)
    uint8 public constant ACT_RETIRE_LINK = 5;     // (uint64, uint64)
    uint8 public constant ACT_ADD_MEMBER = 6;      // (address, bytes32)
    uint8 public constant ACT_REMOVE_MEMBER = 7;   // (address)
    uint8 public constant ACT_SET_THRESHOLD = 8;   // (uint64)

    address public immutable governance;  // the deployer (a founding member; no other power)
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

    // the committee
    address[] private _members;
    mapping(address => bytes32) private _memberKey;   // the member's Ed25519 key
    mapping(address => bool) private _isMember;
    uint64 public threshold;
    uint64 public epoch;
    uint64 public immutable proposalTtl;   // seconds
    uint64 public proposalCount;           // proposal ids are 1..proposalCount
    mapping(uint64 => Proposal) private _proposals;
    mapping(uint64 => mapping(address => bool)) private _approved;
    mapping(bytes32 => uint64) private _byContent;    // the latest proposal of a content
    mapping(uint64 => Vote[]) private _votes;         // dispute -> its decision approvals
    mapping(uint64 => mapping(address => uint256)) private _voteOf;   // index + 1
    mapping(uint64 => bytes32) private _decided;      // dispute -> the content decided

    // the money (docs/ledger.md, "Settlement"): deposits per node, debts, pull credits
    struct Debt {
        uint64 disputeId;
        address tenant;
        uint256 amount;
    }
    uint64 public immutable withdrawalNotice;          // seconds, >= proposalTtl
    mapping(uint64 => uint256) public depositOf;       // node -> its locked deposit (wei)
    mapping(uint64 => uint64) public withdrawalDue;    // node -> when it may withdraw (0: none)
    // a request is good in [due, due + 2 ttl) only: then it lapses (findings C4)
    mapping(uint64 => Debt[]) private _debts;
    mapping(uint64 => uint256) private _debtHead;      // the first unpaid debt
    mapping(uint64 => uint256) public debtOf;          // node -> its unpaid debts, in total
    mapping(address => uint256) public credit;         // failed pushes, to pull
    mapping(uint64 => uint64[]) private _nodeSlas;     // node -> the SLAs whose route holds it
    mapping(uint64 => uint64) public freezingDispute;  // SLA -> its one dispute that may freeze
    mapping(uint64 => uint64) public openedAt;         // dispute -> block.timestamp
    bool private _entered;

    modifier nonReentrant() {
        if (_entered) revert Reentrant();
        _entered = true;
        _;
        _entered = false;
    }

    /// @param accounts the members' accounts, @param pubkeys their Ed25519 keys (data only),
    /// @param k the threshold (1..n), @param ttl the proposals' lifetime in seconds (> 0).
    constructor(string memory hashName_, address[] memory accounts, bytes32[] memory pubkeys,
                uint64 k, uint64 ttl, uint64 notice)
    {
        governance = msg.sender;
        deployedAt = uint64(block.number);
        hashName = hashName_;
        if (accounts.length != pubkeys.length) revert InvalidCommittee("accounts and keys differ in number");
        if (ttl == 0) revert InvalidCommittee("the proposal ttl must be > 0");
        for (uint256 i = 0; i < accounts.length; i++) _addMember(accounts[i], pubkeys[i]);
        if (k == 0 || k > accounts.length) revert InvalidCommittee("k must be in 1..n");
        if (notice < ttl) revert InvalidCommittee("the withdrawal notice must be >= the ttl");
        threshold = k;
        proposalTtl = ttl;
        withdrawalNotice = notice;
        emit CommitteeChanged(0, k, _members);
    }

    modifier onlyGovernance() {
        if (!_isMember[msg.sender]) revert NotGovernance(msg.sender);
        if (threshold != 1) revert NeedsProposal(threshold);
        _;
    }

    modifier onlyMember() {
        if (!_isMember[msg.sender]) revert NotGovernance(msg.sender);
        _;
    }

    // ---------------------------------------------------------------- the committee
    function _addMember(address a, bytes32 pubkey) private {
        if (a == address(0)) revert InvalidCommittee("a member's account must not be 0");
        if (_isMember[a]) revert InvalidCommittee("already a member");
        for (uint256 i = 0; i < _members.length; i++) {
            if (pubkey != bytes32(0) && _memberKey[_members[i]] == pubkey)
                revert InvalidCommittee("the key is already a member's");
        }
        _isMember[a] = true;
        _memberKey[a] = pubkey;
        _members.push(a);
    }

    function _checkAct(uint8 act, bytes memory args) private view {
        if (act == 0 || act > ACT_SET_THRESHOLD) revert UnknownAct(act);
        if (act == ACT_ADD_MEMBER) {
            (address a, ) = abi.decode(args, (address, bytes32));
            if (_isMember[a]) revert InvalidCommittee("already a member");
        } else if (act == ACT_REMOVE_MEMBER) {
            address a = abi.decode(args, (address));
            if (!_isMember[a]) revert InvalidCommittee("not a member");
            if (_members.length - 1 < threshold) revert InvalidCommittee("k would exceed n");
        } else if (act == ACT_SET_THRESHOLD) {
            uint64 k = abi.decode(args, (uint64));
            if (k == 0 || k > _members.length) revert InvalidCommittee("k must be in 1..n");
        }
    }

    function _execute(uint8 act, bytes memory args) private {
        _checkAct(act, args);
        if (act == ACT_REGISTER_NODE) {
            (uint64 n, string memory o, bytes32 pk, address a, address op) =
                abi.decode(args, (uint64, string, bytes32, address, address));
            _registerNode(n, o, pk, a, op);
        } else if (act == ACT_RETIRE_NODE) {
            _retireNode(abi.decode(args, (uint64)));
        } else if (act == ACT_REGISTER_SLA) {
            _registerSLA(abi.decode(args, (SLATerms)));
        } else if (act == ACT_REGISTER_LINK || act == ACT_RETIRE_LINK) {
            (uint64 x, uint64 y) = abi.decode(args, (uint64, uint64));
            if (act == ACT_REGISTER_LINK) _registerLink(x, y); else _retireLink(x, y);
        } else {
            if (act == ACT_ADD_MEMBER) {
                (address a, bytes32 pk) = abi.decode(args, (address, bytes32));
                _addMember(a, pk);
            } else if (act == ACT_REMOVE_MEMBER) {
                address a = abi.decode(args, (address));
                _isMember[a] = false;
                delete _memberKey[a];
                for (uint256 i = 0; i < _members.length; i++) {
                    if (_members[i] == a) {
                        _members[i] = _members[_members.length - 1];
                        _members.pop();
                        break;
                    }
                }
            } else {
                threshold = abi.decode(args, (uint64));
            }
            epoch++;            // every open proposal (and decision approval) of before is void
            emit CommitteeChanged(epoch, threshold, _members);
        }
    }

    function _live(Proposal storage p) private view returns (bool) {
        return !p.executed && p.epoch == epoch && block.timestamp < p.createdAt + proposalTtl;
    }

    /// Propose an act, or approve the identical open proposal (same act and arguments, this
    /// epoch, not expired): the caller's approval either way. Executes at the k-th approval.
    function propose(uint8 act, bytes calldata args) external onlyMember returns (uint64 id) {
        bytes32 h = keccak256(abi.encode(act, args));
        id = _byContent[h];
        if (id == 0 || !_live(_proposals[id])) {
            _checkAct(act, args);
            id = ++proposalCount;
            Proposal storage p = _proposals[id];
            p.act = act;
            p.epoch = epoch;
            p.createdAt = uint64(block.timestamp);
            p.args = args;
            _byContent[h] = id;
            emit Proposed(id, act, msg.sender, epoch, args);
        }
        _approve(id);
    }

    /// Approve proposal `id` (a member, once: again is a no-op).
    function approve(uint64 id) external onlyMember {
        Proposal storage p = _proposals[id];
        if (p.act == 0) revert UnknownProposal(id);
        if (p.executed) revert ProposalDone(id);
        if (p.epoch != epoch) revert ProposalStale(id, p.epoch, epoch);
        if (block.timestamp >= p.createdAt + proposalTtl)
            revert ProposalExpired(id, p.createdAt + proposalTtl);
        _approve(id);
    }

    function _approve(uint64 id) private {
        if (_approved[id][msg.sender]) return;
        Proposal storage p = _proposals[id];
        _approved[id][msg.sender] = true;
        p.approvers.push(msg.sender);
        emit Approved(id, msg.sender, uint64(p.approvers.length));
        if (p.approvers.length >= threshold) {
            p.executed = true;
            _execute(p.act, p.args);
            emit Executed(id);
        }
    }

    // ---------------------------------------------------------------- registration
    function registerNode(uint64 nodeId, string calldata owner, bytes32 pubkey, address account,
                          address operator) external onlyGovernance
    {
        _registerNode(nodeId, owner, pubkey, account, operator);
    }

    function _registerNode(uint64 nodeId, string memory owner, bytes32 pubkey, address account,
                           address operator) private
    {
        if (nodeId == 0 || nodeId == type(uint64).max) revert InvalidNode(nodeId, "nodeId must be in 1..2^64-2");
        if (account == address(0)) revert InvalidNode(nodeId, "account must not be the zero address");
        if (_nodes[nodeId].exists) revert NodeExists(nodeId);
        _nodes[nodeId] = NodeRec(true, owner, pubkey, account, 0, operator, false);
        _nodeIds.push(nodeId);
        emit NodeRegistered(nodeId, owner, pubkey, account);
    }

    /// The node anchors no more (its anchors stay). Idempotent.
    function retireNode(uint64 nodeId) external onlyGovernance {
        _retireNode(nodeId);
    }

    function _retireNode(uint64 nodeId) private {
        if (!_nodes[nodeId].exists) revert UnknownNode(nodeId);
        if (_nodes[nodeId].retired) return;
        _nodes[nodeId].retired = true;
        emit NodeRetired(nodeId);
    }

    function _linkKey(uint64 x, uint64 y) private pure returns (uint64 a, uint64 b, uint128 key) {
        (a, b) = x < y ? (x, y) : (y, x);
        if (a == b) revert InvalidLink(a, b, "a link joins two different nodes");
        key = (uint128(a) << 64) | b;
    }

    /// An undirected link between two registered nodes. Idempotent: an active link again is a
    /// no-op (no event); a retired one becomes active again.
    function registerLink(uint64 x, uint64 y) external onlyGovernance {
        _registerLink(x, y);
    }

    function _registerLink(uint64 x, uint64 y) private {
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
        _retireLink(x, y);
    }

    function _retireLink(uint64 x, uint64 y) private {
        (uint64 a, uint64 b, uint128 key) = _linkKey(x, y);
        uint8 state = _linkState[key];
        if (state == 0) revert UnknownLink(a, b);
        if (state == LINK_RETIRED) return;
        _linkState[key] = LINK_RETIRED;
        emit LinkRetired(a, b);
    }

    function registerSLA(SLATerms calldata s) external onlyGovernance {
        _registerSLA(s);
    }

    function _registerSLA(SLATerms memory s) private {
        if (_slaExists[s.slaId]) revert SLAExists(s.slaId);
        if (s.route.length == 0) revert InvalidSLA(s.slaId, "route must not be empty");
        if (s.validFromNs > s.validToNs) revert InvalidSLA(s.slaId, "validFromNs after validToNs");
        if (s.penaltyPerViolation > type(uint64).max / s.route.length)
            revert InvalidSLA(s.slaId, "penalty x route length above 2^64-1");
        for (uint256 i = 0; i < s.route.length; i++) _nodeSlas[s.route[i]].push(s.slaId);
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
        if (!n.exists || msg.sender != n.account || n.retired)
            revert NotNodeAccount(nodeId, msg.sender, n.retired ? address(0) : n.account);
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
        if (!_isMember[msg.sender] && (t == address(0) || msg.sender != t))
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
        openedAt[disputeId] = uint64(block.timestamp);
        // one dispute per SLA freezes its route's deposits (for a ttl at most); the next one
        // freezes only once that one is settled (an expired undecided one: decide it first)
        uint64 f = freezingDispute[slaId];
        if (f == 0 || _disputes[f].state == SETTLED) freezingDispute[slaId] = disputeId;
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
        _decide(d, verdictDigest, faulty);
    }

    function _decide(DisputeRec storage d, bytes32 verdictDigest, uint64[] memory faulty) private {
        uint64 disputeId = d.disputeId;
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
        _decided[disputeId] = keccak256(abi.encode(disputeId, d.evidenceDigest, verdictDigest, faulty));
        emit Decided(disputeId, verdictDigest, faulty, d.penalty);
    }

    /// Settle a decided dispute (any member: the decision fixed what it does).
    function settle(uint64 disputeId) external onlyMember nonReentrant {
        _settle(_dispute(disputeId, DECIDED));
    }

    /// The penalty of each faulty node goes from its operator's deposit to the tenant; what the
    /// deposit can not cover is the node's debt (a node without an operator: all of it).
    /// Nothing moves for an SLA without a tenant account. State first, transfers last (a failed one: credit).
    function _settle(DisputeRec storage d) private {
        d.state = SETTLED;
        SLATerms storage s = _slas[d.slaId];
        address tenant = s.tenantAccount;
        uint256 ppv = s.penaltyPerViolation;
        uint256 total = 0;
        if (tenant != address(0) && ppv > 0) {
            for (uint256 i = 0; i < d.faulty.length; i++) {
                uint64 node = d.faulty[i];
                uint256 take = depositOf[node] < ppv ? depositOf[node] : ppv;
                depositOf[node] -= take;
                total += take;
                if (take > 0) emit PenaltyPaid(d.disputeId, node, tenant, take);
                if (ppv > take) {
                    _debts[node].push(Debt(d.disputeId, tenant, ppv - take));
                    debtOf[node] += ppv - take;
                    emit DebtRecorded(d.disputeId, node, tenant, ppv - take);
                }
            }
        }
        emit Settled(d.disputeId, d.slaId, d.penalty);
        _pay(tenant, total);
    }

    /// Send `amount` to `to` (last, after every state change); a transfer that fails does not
    /// block what called it: the amount is credited to `to`, who pulls it (withdrawCredit).
    function _pay(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool ok, ) = to.call{value: amount, gas: 50000}("");
        if (!ok) {
            credit[to] += amount;
            emit Credited(to, amount);
        }
    }

    function withdrawCredit() external nonReentrant {
        uint256 amount = credit[msg.sender];
        credit[msg.sender] = 0;
        emit CreditWithdrawn(msg.sender, amount);
        (bool ok, ) = msg.sender.call{value: amount}("");
        require(ok);
    }

    function _operator(uint64 nodeId) private view returns (address op) {
        op = _nodes[nodeId].operator;
        if (!_nodes[nodeId].exists) revert UnknownNode(nodeId);
        if (op == address(0) || msg.sender != op) revert NotOperator(nodeId, msg.sender, op);
    }

    /// The operator locks value for its node; the node's debts are paid first, oldest first.
    function deposit(uint64 nodeId) external payable nonReentrant {
        _operator(nodeId);
        uint256 left = msg.value;
        Debt[] storage ds = _debts[nodeId];
        uint256 h = _debtHead[nodeId];
        address[] memory to = new address[](ds.length - h);
        uint256[] memory amt = new uint256[](ds.length - h);
        uint256 m = 0;
        while (h < ds.length && left > 0) {
            Debt storage x = ds[h];
            uint256 pay = x.amount < left ? x.amount : left;
            x.amount -= pay;
            left -= pay;
            debtOf[nodeId] -= pay;
            emit DebtPaid(x.disputeId, nodeId, x.tenant, pay);
            to[m] = x.tenant;
            amt[m++] = pay;
            if (x.amount == 0) h++;
        }
        _debtHead[nodeId] = h;
        depositOf[nodeId] += left;
        emit Deposited(nodeId, msg.sender, msg.value, depositOf[nodeId]);
        for (uint256 i = 0; i < m; i++) _pay(to[i], amt[i]);
    }

    function requestWithdrawal(uint64 nodeId) external {
        _operator(nodeId);
        uint64 due = uint64(block.timestamp) + withdrawalNotice;
        withdrawalDue[nodeId] = due;
        emit WithdrawalRequested(nodeId, due, due + 2 * proposalTtl);
    }

    /// The whole deposit to the operator, after the notice; refused while the node has a debt or
    /// a dispute is open on an SLA whose route holds it (a dispute undecided for a ttl after it
    /// was opened no longer freezes: the committee had that long to decide it).
    function withdraw(uint64 nodeId) external nonReentrant {
        address op = _operator(nodeId);
        uint64 due = withdrawalDue[nodeId];
        if (due == 0 || block.timestamp < due || block.timestamp >= due + 2 * proposalTtl)
            revert WithdrawalNotDue(nodeId, due);   // none, not yet, or lapsed
        if (debtOf[nodeId] > 0) revert DepositInDebt(nodeId, debtOf[nodeId]);
        uint64 f = frozenBy(nodeId);
        if (f != 0) revert DepositFrozen(nodeId, f);
        uint256 amount = depositOf[nodeId];
        depositOf[nodeId] = 0;
        withdrawalDue[nodeId] = 0;
        emit Withdrawn(nodeId, op, amount);
        (bool ok, ) = op.call{value: amount}("");
        require(ok);
    }

    /// The open dispute that freezes the node's deposit (0: none): the freezing dispute of an
    /// SLA whose route holds it, unsettled and opened less than a ttl ago. The loop is over the
    /// node's SLAs (registered by the committee), never over disputes.
    function frozenBy(uint64 nodeId) public view returns (uint64) {
        uint64[] storage ss = _nodeSlas[nodeId];
        for (uint256 i = 0; i < ss.length; i++) {
            uint64 id = freezingDispute[ss[i]];
            if (id != 0 && _disputes[id].state < SETTLED && block.timestamp < openedAt[id] + proposalTtl)
                return id;
        }
        return 0;
    }

    /// The node's unpaid debts, oldest first.
    function debts(uint64 nodeId) external view returns (Debt[] memory out) {
        Debt[] storage ds = _debts[nodeId];
        uint256 h = _debtHead[nodeId];
        out = new Debt[](ds.length - h);
        for (uint256 i = h; i < ds.length; i++) out[i - h] = ds[i];
    }

    /// A member approves the decision it computed: (evidence digest, verdict digest, faulty,
    /// ascending). At the k-th approval of one content (this epoch, each within the ttl) the
    /// dispute is decided and settled in this transaction. An approval of another content is
    /// dissent (kept, visible after the decision); a member approves one content per dispute.
    function approveDecision(uint64 disputeId, bytes32 evidenceDigest, bytes32 verdictDigest,
                             uint64[] calldata faulty) external onlyMember nonReentrant
    {
        DisputeRec storage d = _disputes[disputeId];
        if (d.state == 0) revert UnknownDispute(disputeId);
        for (uint256 i = 1; i < faulty.length; i++) {
            if (faulty[i] <= faulty[i - 1]) revert FaultyDuplicate(disputeId, faulty[i]);
        }
        bytes32 c = keccak256(abi.encode(disputeId, evidenceDigest, verdictDigest, faulty));
        uint256 mine = _voteOf[disputeId][msg.sender];
        if (mine != 0) {
            Vote storage v = _votes[disputeId][mine - 1];
            if (v.content == c && d.state >= DECIDED) return;                  // counted once
            if (v.content == c && v.epoch == epoch) {
                if (block.timestamp < v.at + proposalTtl) return;             // counted once
                v.at = uint64(block.timestamp);   // an expired approval renewed (same content)
            } else {
                if (v.epoch == epoch || d.state >= DECIDED)
                    revert DecisionConflict(disputeId, msg.sender, v.content);
                v.epoch = epoch;           // a vote of an older epoch: cast anew
                v.at = uint64(block.timestamp);
                v.content = c;
                v.evidenceDigest = evidenceDigest;
                v.verdictDigest = verdictDigest;
            }
        } else {
            _votes[disputeId].push(Vote(msg.sender, epoch, uint64(block.timestamp), c,
                                        evidenceDigest, verdictDigest));
            _voteOf[disputeId][msg.sender] = _votes[disputeId].length;
        }
        if (d.state >= DECIDED) {          // late: dissent (or the same content: done above)
            emit Dissent(disputeId, msg.sender, verdictDigest);
            return;
        }
        uint64 n = 0;
        Vote[] storage vs = _votes[disputeId];
        for (uint256 i = 0; i < vs.length; i++) {
            if (vs[i].content == c && vs[i].epoch == epoch && block.timestamp < vs[i].at + proposalTtl) n++;
        }
        emit DecisionApproved(disputeId, msg.sender, c, evidenceDigest, verdictDigest, faulty, n);
        if (n < threshold) return;
        d.evidenceDigest = evidenceDigest;
        if (d.state == OPENED) emit EvidenceRecorded(disputeId, evidenceDigest);
        _decide(d, verdictDigest, faulty);
        for (uint256 i = 0; i < vs.length; i++) {
            if (vs[i].content != c) emit Dissent(disputeId, vs[i].member, vs[i].verdictDigest);
        }
        _settle(d);
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
        returns (bool exists, string memory owner, bytes32 pubkey, address account, uint64 nextSeq,
                 address operator, bool retired)
    {
        NodeRec storage n = _nodes[nodeId];
        return (n.exists, n.owner, n.pubkey, n.account, n.nextSeq, n.operator, n.retired);
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

    function committee() external view
        returns (address[] memory accounts, bytes32[] memory pubkeys, uint64 k, uint64 epoch_, uint64 ttl)
    {
        accounts = _members;
        pubkeys = new bytes32[](accounts.length);
        for (uint256 i = 0; i < accounts.length; i++) pubkeys[i] = _memberKey[accounts[i]];
        return (accounts, pubkeys, threshold, epoch, proposalTtl);
    }

    function getProposal(uint64 id) external view returns (Proposal memory) {
        return _proposals[id];
    }

    /// A dispute's decision approvals (dissent included) and the content decided (0: none yet).
    function disputeVotes(uint64 disputeId) external view returns (Vote[] memory votes, bytes32 decided) {
        return (_votes[disputeId], _decided[disputeId]);
    }

    function getDispute(uint64 disputeId) external view returns (bool exists, DisputeRec memory dispute) {
        DisputeRec storage d = _disputes[disputeId];
        return (d.state != 0, d);
    }
}
