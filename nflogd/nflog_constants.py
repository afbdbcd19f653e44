"""nflogr's PROTO_* and HWTYPE_* constants: what ``NflogData.proto`` and ``.hwtype`` hold.

nflogr generates them at build time from the build machine's <linux/if_ether.h> (ETH_P_* as
PROTO_*) and <linux/if_arp.h> (ARPHRD_* as HWTYPE_*). They are written out here, from Debian 12's
headers (linux-libc-dev 6.1), the set nflogr 0.2.12 has when built there, so they do not depend
on the headers of the machine nflogd is built on; ``make test-compat`` checks every one of
nflogr's names and values against this module.
"""

# PROTO_*: <linux/if_ether.h> ETH_P_*
PROTO_LOOP = 0x0060             # Ethernet Loopback packet
PROTO_PUP = 0x0200              # Xerox PUP packet
PROTO_PUPAT = 0x0201            # Xerox PUP Addr Trans packet
PROTO_TSN = 0x22F0              # TSN (IEEE 1722) packet
PROTO_ERSPAN2 = 0x22EB          # ERSPAN version 2 (type III)
PROTO_IP = 0x0800               # Internet Protocol packet
PROTO_X25 = 0x0805              # CCITT X.25
PROTO_ARP = 0x0806              # Address Resolution packet
PROTO_BPQ = 0x08FF              # G8BPQ AX.25 Ethernet Packet	[ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_IEEEPUP = 0x0A00          # Xerox IEEE802.3 PUP packet
PROTO_IEEEPUPAT = 0x0A01        # Xerox IEEE802.3 PUP Addr Trans packet
PROTO_BATMAN = 0x4305           # B.A.T.M.A.N.-Advanced packet [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_DEC = 0x6000              # DEC Assigned proto
PROTO_DNA_DL = 0x6001           # DEC DNA Dump/Load
PROTO_DNA_RC = 0x6002           # DEC DNA Remote Console
PROTO_DNA_RT = 0x6003           # DEC DNA Routing
PROTO_LAT = 0x6004              # DEC LAT
PROTO_DIAG = 0x6005             # DEC Diagnostics
PROTO_CUST = 0x6006             # DEC Customer use
PROTO_SCA = 0x6007              # DEC Systems Comms Arch
PROTO_TEB = 0x6558              # Trans Ether Bridging
PROTO_RARP = 0x8035             # Reverse Addr Res packet
PROTO_ATALK = 0x809B            # Appletalk DDP
PROTO_AARP = 0x80F3             # Appletalk AARP
PROTO_8021Q = 0x8100            # 802.1Q VLAN Extended Header
PROTO_ERSPAN = 0x88BE           # ERSPAN type II
PROTO_IPX = 0x8137              # IPX over DIX
PROTO_IPV6 = 0x86DD             # IPv6 over bluebook
PROTO_PAUSE = 0x8808            # IEEE Pause frames. See 802.3 31B
PROTO_SLOW = 0x8809             # Slow Protocol. See 802.3ad 43B
PROTO_WCCP = 0x883E             # Web-cache coordination protocol
PROTO_MPLS_UC = 0x8847          # MPLS Unicast traffic
PROTO_MPLS_MC = 0x8848          # MPLS Multicast traffic
PROTO_ATMMPOA = 0x884C          # MultiProtocol Over ATM
PROTO_PPP_DISC = 0x8863         # PPPoE discovery messages
PROTO_PPP_SES = 0x8864          # PPPoE session messages
PROTO_LINK_CTL = 0x886C         # HPNA, wlan link local tunnel
PROTO_ATMFATE = 0x8884          # Frame-based ATM Transport
PROTO_PAE = 0x888E              # Port Access Entity (IEEE 802.1X)
PROTO_PROFINET = 0x8892         # PROFINET
PROTO_REALTEK = 0x8899          # Multiple proprietary protocols
PROTO_AOE = 0x88A2              # ATA over Ethernet
PROTO_ETHERCAT = 0x88A4         # EtherCAT
PROTO_8021AD = 0x88A8           # 802.1ad Service VLAN
PROTO_802_EX1 = 0x88B5          # 802.1 Local Experimental 1.
PROTO_PREAUTH = 0x88C7          # 802.11 Preauthentication
PROTO_TIPC = 0x88CA             # TIPC
PROTO_LLDP = 0x88CC             # Link Layer Discovery Protocol
PROTO_MRP = 0x88E3              # Media Redundancy Protocol
PROTO_MACSEC = 0x88E5           # 802.1ae MACsec
PROTO_8021AH = 0x88E7           # 802.1ah Backbone Service Tag
PROTO_MVRP = 0x88F5             # 802.1Q MVRP
PROTO_1588 = 0x88F7             # IEEE 1588 Timesync
PROTO_NCSI = 0x88F8             # NCSI protocol
PROTO_PRP = 0x88FB              # IEC 62439-3 PRP/HSRv0
PROTO_CFM = 0x8902              # Connectivity Fault Management
PROTO_FCOE = 0x8906             # Fibre Channel over Ethernet
PROTO_IBOE = 0x8915             # Infiniband over Ethernet
PROTO_TDLS = 0x890D             # TDLS
PROTO_FIP = 0x8914              # FCoE Initialization Protocol
PROTO_80221 = 0x8917            # IEEE 802.21 Media Independent Handover Protocol
PROTO_HSR = 0x892F              # IEC 62439-3 HSRv1
PROTO_NSH = 0x894F              # Network Service Header
PROTO_LOOPBACK = 0x9000         # Ethernet loopback packet, per IEEE 802.3
PROTO_QINQ1 = 0x9100            # deprecated QinQ VLAN [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_QINQ2 = 0x9200            # deprecated QinQ VLAN [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_QINQ3 = 0x9300            # deprecated QinQ VLAN [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_EDSA = 0xDADA             # Ethertype DSA [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_DSA_8021Q = 0xDADB        # Fake VLAN Header for DSA [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_DSA_A5PSW = 0xE001        # A5PSW Tag Value [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_IFE = 0xED3E              # ForCES inter-FE LFB type
PROTO_AF_IUCV = 0xFBFB          # IBM af_iucv [ NOT AN OFFICIALLY REGISTERED ID ]
PROTO_802_3_MIN = 0x0600        # If the value in the ethernet type is more than this value
PROTO_802_3 = 0x0001            # Dummy type for 802.3 frames
PROTO_AX25 = 0x0002             # Dummy protocol id for AX.25
PROTO_ALL = 0x0003              # Every packet (be careful!!!)
PROTO_802_2 = 0x0004            # 802.2 frames
PROTO_SNAP = 0x0005             # Internal only
PROTO_DDCMP = 0x0006            # DEC DDCMP: Internal only
PROTO_WAN_PPP = 0x0007          # Dummy type for WAN PPP frames
PROTO_PPP_MP = 0x0008           # Dummy type for PPP MP frames
PROTO_LOCALTALK = 0x0009        # Localtalk pseudo type
PROTO_CAN = 0x000C              # CAN: Controller Area Network
PROTO_CANFD = 0x000D            # CANFD: CAN flexible data rate
PROTO_CANXL = 0x000E            # CANXL: eXtended frame Length
PROTO_PPPTALK = 0x0010          # Dummy type for Atalk over PPP
PROTO_TR_802_2 = 0x0011         # 802.2 frames
PROTO_MOBITEX = 0x0015          # Mobitex (kaz@cafe.net)
PROTO_CONTROL = 0x0016          # Card specific control frames
PROTO_IRDA = 0x0017             # Linux-IrDA
PROTO_ECONET = 0x0018           # Acorn Econet
PROTO_HDLC = 0x0019             # HDLC frames
PROTO_ARCNET = 0x001A           # 1A for ArcNet :-)
PROTO_DSA = 0x001B              # Distributed Switch Arch.
PROTO_TRAILER = 0x001C          # Trailer switch tagging
PROTO_PHONET = 0x00F5           # Nokia Phonet frames
PROTO_IEEE802154 = 0x00F6       # IEEE802.15.4 frame
PROTO_CAIF = 0x00F7             # ST-Ericsson CAIF protocol
PROTO_XDSA = 0x00F8             # Multiplexed DSA protocol
PROTO_MAP = 0x00F9              # Qualcomm multiplexing and
PROTO_MCTP = 0x00FA             # Management component transport

# HWTYPE_*: <linux/if_arp.h> ARPHRD_*
HWTYPE_NETROM = 0               # from KA9Q: NET/ROM pseudo
HWTYPE_ETHER = 1                # Ethernet 10Mbps
HWTYPE_EETHER = 2               # Experimental Ethernet
HWTYPE_AX25 = 3                 # AX.25 Level 2
HWTYPE_PRONET = 4               # PROnet token ring
HWTYPE_CHAOS = 5                # Chaosnet
HWTYPE_IEEE802 = 6              # IEEE 802.2 Ethernet/TR/TB
HWTYPE_ARCNET = 7               # ARCnet
HWTYPE_APPLETLK = 8             # APPLEtalk
HWTYPE_DLCI = 15                # Frame Relay DLCI
HWTYPE_ATM = 19                 # ATM
HWTYPE_METRICOM = 23            # Metricom STRIP (new IANA id)
HWTYPE_IEEE1394 = 24            # IEEE 1394 IPv4 - RFC 2734
HWTYPE_EUI64 = 27               # EUI-64
HWTYPE_INFINIBAND = 32          # InfiniBand
HWTYPE_SLIP = 256
HWTYPE_CSLIP = 257
HWTYPE_SLIP6 = 258
HWTYPE_CSLIP6 = 259
HWTYPE_RSRVD = 260              # Notional KISS type
HWTYPE_ADAPT = 264
HWTYPE_ROSE = 270
HWTYPE_X25 = 271                # CCITT X.25
HWTYPE_HWX25 = 272              # Boards with X.25 in firmware
HWTYPE_CAN = 280                # Controller Area Network
HWTYPE_MCTP = 290
HWTYPE_PPP = 512
HWTYPE_CISCO = 513              # Cisco HDLC
HWTYPE_HDLC = 513
HWTYPE_LAPB = 516               # LAPB
HWTYPE_DDCMP = 517              # Digital's DDCMP protocol
HWTYPE_RAWHDLC = 518            # Raw HDLC
HWTYPE_RAWIP = 519              # Raw IP
HWTYPE_TUNNEL = 768             # IPIP tunnel
HWTYPE_TUNNEL6 = 769            # IP6IP6 tunnel
HWTYPE_FRAD = 770               # Frame Relay Access Device
HWTYPE_SKIP = 771               # SKIP vif
HWTYPE_LOOPBACK = 772           # Loopback device
HWTYPE_LOCALTLK = 773           # Localtalk device
HWTYPE_FDDI = 774               # Fiber Distributed Data Interface
HWTYPE_BIF = 775                # AP1000 BIF
HWTYPE_SIT = 776                # sit0 device - IPv6-in-IPv4
HWTYPE_IPDDP = 777              # IP over DDP tunneller
HWTYPE_IPGRE = 778              # GRE over IP
HWTYPE_PIMREG = 779             # PIMSM register interface
HWTYPE_HIPPI = 780              # High Performance Parallel Interface
HWTYPE_ASH = 781                # Nexus 64Mbps Ash
HWTYPE_ECONET = 782             # Acorn Econet
HWTYPE_IRDA = 783               # Linux-IrDA
HWTYPE_FCPP = 784               # Point to point fibrechannel
HWTYPE_FCAL = 785               # Fibrechannel arbitrated loop
HWTYPE_FCPL = 786               # Fibrechannel public loop
HWTYPE_FCFABRIC = 787           # Fibrechannel fabric
HWTYPE_IEEE802_TR = 800         # Magic type ident for TR
HWTYPE_IEEE80211 = 801          # IEEE 802.11
HWTYPE_IEEE80211_PRISM = 802    # IEEE 802.11 + Prism2 header
HWTYPE_IEEE80211_RADIOTAP = 803 # IEEE 802.11 + radiotap header
HWTYPE_IEEE802154 = 804
HWTYPE_IEEE802154_MONITOR = 805 # IEEE 802.15.4 network monitor
HWTYPE_PHONET = 820             # PhoNet media type
HWTYPE_PHONET_PIPE = 821        # PhoNet pipe header
HWTYPE_CAIF = 822               # CAIF media type
HWTYPE_IP6GRE = 823             # GRE over IPv6
HWTYPE_NETLINK = 824            # Netlink header
HWTYPE_6LOWPAN = 825            # IPv6 over LoWPAN
HWTYPE_VSOCKMON = 826           # Vsock monitor header
HWTYPE_VOID = 65535             # Void type, nothing is known
HWTYPE_NONE = 65534             # zero header length

__all__ = [
    "PROTO_LOOP", "PROTO_PUP", "PROTO_PUPAT", "PROTO_TSN", "PROTO_ERSPAN2", "PROTO_IP",
    "PROTO_X25", "PROTO_ARP", "PROTO_BPQ", "PROTO_IEEEPUP", "PROTO_IEEEPUPAT", "PROTO_BATMAN",
    "PROTO_DEC", "PROTO_DNA_DL", "PROTO_DNA_RC", "PROTO_DNA_RT", "PROTO_LAT", "PROTO_DIAG",
    "PROTO_CUST", "PROTO_SCA", "PROTO_TEB", "PROTO_RARP", "PROTO_ATALK", "PROTO_AARP",
    "PROTO_8021Q", "PROTO_ERSPAN", "PROTO_IPX", "PROTO_IPV6", "PROTO_PAUSE", "PROTO_SLOW",
    "PROTO_WCCP", "PROTO_MPLS_UC", "PROTO_MPLS_MC", "PROTO_ATMMPOA", "PROTO_PPP_DISC",
    "PROTO_PPP_SES", "PROTO_LINK_CTL", "PROTO_ATMFATE", "PROTO_PAE", "PROTO_PROFINET",
    "PROTO_REALTEK", "PROTO_AOE", "PROTO_ETHERCAT", "PROTO_8021AD", "PROTO_802_EX1",
    "PROTO_PREAUTH", "PROTO_TIPC", "PROTO_LLDP", "PROTO_MRP", "PROTO_MACSEC", "PROTO_8021AH",
    "PROTO_MVRP", "PROTO_1588", "PROTO_NCSI", "PROTO_PRP", "PROTO_CFM", "PROTO_FCOE",
    "PROTO_IBOE", "PROTO_TDLS", "PROTO_FIP", "PROTO_80221", "PROTO_HSR", "PROTO_NSH",
    "PROTO_LOOPBACK", "PROTO_QINQ1", "PROTO_QINQ2", "PROTO_QINQ3", "PROTO_EDSA",
    "PROTO_DSA_8021Q", "PROTO_DSA_A5PSW", "PROTO_IFE", "PROTO_AF_IUCV", "PROTO_802_3_MIN",
    "PROTO_802_3", "PROTO_AX25", "PROTO_ALL", "PROTO_802_2", "PROTO_SNAP", "PROTO_DDCMP",
    "PROTO_WAN_PPP", "PROTO_PPP_MP", "PROTO_LOCALTALK", "PROTO_CAN", "PROTO_CANFD",
    "PROTO_CANXL", "PROTO_PPPTALK", "PROTO_TR_802_2", "PROTO_MOBITEX", "PROTO_CONTROL",
    "PROTO_IRDA", "PROTO_ECONET", "PROTO_HDLC", "PROTO_ARCNET", "PROTO_DSA", "PROTO_TRAILER",
    "PROTO_PHONET", "PROTO_IEEE802154", "PROTO_CAIF", "PROTO_XDSA", "PROTO_MAP", "PROTO_MCTP",
    "HWTYPE_NETROM", "HWTYPE_ETHER", "HWTYPE_EETHER", "HWTYPE_AX25", "HWTYPE_PRONET",
    "HWTYPE_CHAOS", "HWTYPE_IEEE802", "HWTYPE_ARCNET", "HWTYPE_APPLETLK", "HWTYPE_DLCI",
    "HWTYPE_ATM", "HWTYPE_METRICOM", "HWTYPE_IEEE1394", "HWTYPE_EUI64", "HWTYPE_INFINIBAND",
    "HWTYPE_SLIP", "HWTYPE_CSLIP", "HWTYPE_SLIP6", "HWTYPE_CSLIP6", "HWTYPE_RSRVD",
    "HWTYPE_ADAPT", "HWTYPE_ROSE", "HWTYPE_X25", "HWTYPE_HWX25", "HWTYPE_CAN", "HWTYPE_MCTP",
    "HWTYPE_PPP", "HWTYPE_CISCO", "HWTYPE_HDLC", "HWTYPE_LAPB", "HWTYPE_DDCMP",
    "HWTYPE_RAWHDLC", "HWTYPE_RAWIP", "HWTYPE_TUNNEL", "HWTYPE_TUNNEL6", "HWTYPE_FRAD",
    "HWTYPE_SKIP", "HWTYPE_LOOPBACK", "HWTYPE_LOCALTLK", "HWTYPE_FDDI", "HWTYPE_BIF",
    "HWTYPE_SIT", "HWTYPE_IPDDP", "HWTYPE_IPGRE", "HWTYPE_PIMREG", "HWTYPE_HIPPI",
    "HWTYPE_ASH", "HWTYPE_ECONET", "HWTYPE_IRDA", "HWTYPE_FCPP", "HWTYPE_FCAL", "HWTYPE_FCPL",
    "HWTYPE_FCFABRIC", "HWTYPE_IEEE802_TR", "HWTYPE_IEEE80211", "HWTYPE_IEEE80211_PRISM",
    "HWTYPE_IEEE80211_RADIOTAP", "HWTYPE_IEEE802154", "HWTYPE_IEEE802154_MONITOR",
    "HWTYPE_PHONET", "HWTYPE_PHONET_PIPE", "HWTYPE_CAIF", "HWTYPE_IP6GRE", "HWTYPE_NETLINK",
    "HWTYPE_6LOWPAN", "HWTYPE_VSOCKMON", "HWTYPE_VOID", "HWTYPE_NONE",
]
