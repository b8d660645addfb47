"""agent_host.channel_sockets: finding a VM's channel socket in its domain XML."""

from __future__ import annotations

from agent_host.channel_sockets import channel_path


def test_channel_path_found_by_name() -> None:
    xml = """<domain><devices>
      <channel type='unix'><source mode='bind' path='/run/a.sock'/>
        <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
      <channel type='unix'><source mode='bind' path='/run/h.sock'/>
        <target type='virtio' name='org.hypertier.0'/></channel>
    </devices></domain>"""
    assert channel_path(xml) == "/run/h.sock"
    assert channel_path("<domain><devices/></domain>") is None
