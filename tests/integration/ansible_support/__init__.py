"""Helpers for tests/integration/test_ansible.py: cached Debian root filesystems and
ansible-playbook runs against them over the chroot connection."""
